package synth

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/bcd"
)

// HiveNames are the config hives of a base layer, in the order they are
// written; DeltaNames are their delta files under Hives/ in a child layer,
// spelled in mixed case as Windows exports them.
var (
	HiveNames  = []string{"DEFAULT", "SAM", "SECURITY", "SOFTWARE", "SYSTEM"}
	DeltaNames = map[string]string{
		"DEFAULT": "DefaultUser_Delta", "SAM": "Sam_Delta", "SECURITY": "Security_Delta",
		"SOFTWARE": "Software_Delta", "SYSTEM": "System_Delta",
	}
)

// epoch is when synthetic layers were "built": every time is derived from
// it, so output depends only on the seed.
var epoch = time.Date(2021, 5, 8, 12, 0, 0, 0, time.UTC)

// BaseHives returns the five config hives of the base layer made from seed.
func BaseHives(seed uint64) (map[string]*regf.Hive, error) {
	rng := rand.New(rand.NewPCG(seed, 0x68697665)) // "hive"
	hs := map[string]*regf.Hive{}
	b := &hiveBuilder{}
	for _, name := range HiveNames {
		h := regf.New()
		hs[name] = h
		switch name {
		case "SYSTEM":
			b.set(h, `Select`, "Current", regf.RegDWord, regf.DWordData(1))
			b.set(h, `Select`, "Default", regf.RegDWord, regf.DWordData(1))
			b.set(h, `Select`, "LastKnownGood", regf.RegDWord, regf.DWordData(1))
			b.set(h, `ControlSet001\Control`, "CurrentUser", regf.RegSZ, regf.StringData("USERNAME"))
			b.set(h, `ControlSet001\Control\ComputerName\ComputerName`, "ComputerName", regf.RegSZ,
				regf.StringData(fmt.Sprintf("SYNTH-%d", seed)))
			b.set(h, `ControlSet001\Services\wcifs`, "Start", regf.RegDWord, regf.DWordData(2))
			b.set(h, `ControlSet001\Services\UnionFS`, "Start", regf.RegDWord, regf.DWordData(4))
			for i := range 40 {
				k := fmt.Sprintf(`ControlSet001\Services\Svc%03d`, i)
				b.set(h, k, "ImagePath", regf.RegExpandSZ, regf.StringData(fmt.Sprintf(`%%SystemRoot%%\System32\svc%03d.exe`, i)))
				b.set(h, k, "Start", regf.RegDWord, regf.DWordData(uint32(rng.IntN(5))))
				b.set(h, k, "Type", regf.RegDWord, regf.DWordData(0x10))
				b.set(h, k, "DependOnService", regf.RegMultiSZ, regf.MultiStringData([]string{"RpcSs", fmt.Sprintf("Svc%03d", rng.IntN(40))}))
			}
			b.set(h, `Setup`, "SystemSetupInProgress", regf.RegDWord, regf.DWordData(0))
		case "SOFTWARE":
			cv := `Microsoft\Windows NT\CurrentVersion`
			b.set(h, cv, "CurrentBuild", regf.RegSZ, regf.StringData("20348"))
			b.set(h, cv, "CurrentBuildNumber", regf.RegSZ, regf.StringData("20348"))
			b.set(h, cv, "ProductName", regf.RegSZ, regf.StringData("Windows Server 2022 Datacenter (synthetic)"))
			b.set(h, cv, "InstallDate", regf.RegDWord, regf.DWordData(uint32(epoch.Unix())))
			b.set(h, cv, "DigitalProductId", regf.RegBinary, randBytes(rng, 164))
			b.set(h, `Microsoft\Windows\CurrentVersion`, "ProgramFilesDir", regf.RegSZ, regf.StringData(`C:\Program Files`))
			// Larger than 16 KiB: stored in big-data (db) cells.
			b.set(h, `Microsoft\Synthetic`, "Blob", regf.RegBinary, randBytes(rng, 40000))
			b.set(h, `Microsoft\Synthetic`, "Counter", regf.RegQWord, regf.QWordData(rng.Uint64()))
			for i := range 60 {
				k := fmt.Sprintf(`Classes\.ext%02d`, i)
				b.set(h, k, "", regf.RegSZ, regf.StringData(fmt.Sprintf("ext%02dfile", i)))
				b.set(h, k, "Content Type", regf.RegSZ, regf.StringData("application/x-synthetic"))
			}
		case "SAM":
			b.set(h, `SAM\Domains\Account\Users\Names\Administrator`, "", regf.ValueType(0x1f4), nil)
			b.set(h, `SAM\Domains\Account\Users\000001F4`, "F", regf.RegBinary, randBytes(rng, 80))
		case "SECURITY":
			b.set(h, `Policy\PolAdtEv`, "", regf.RegBinary, randBytes(rng, 60))
			b.set(h, `Policy\Accounts`, "", regf.RegNone, nil)
		case "DEFAULT":
			b.set(h, `Control Panel\Desktop`, "Wallpaper", regf.RegSZ, regf.StringData(""))
			b.set(h, `Environment`, "TEMP", regf.RegExpandSZ, regf.StringData(`%USERPROFILE%\AppData\Local\Temp`))
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	for _, h := range hs {
		stamp(h, epoch)
	}
	return hs, nil
}

// ChildHives returns the hives the child layer made from seed leaves: the
// base hives with values changed, keys added and keys and values deleted.
func ChildHives(base map[string]*regf.Hive, seed uint64) (map[string]*regf.Hive, error) {
	rng := rand.New(rand.NewPCG(seed, 0x6368696c64)) // "child"
	hs := map[string]*regf.Hive{}
	for name, h := range base {
		raw, err := h.Marshal()
		if err == nil {
			hs[name], err = regf.Parse(raw)
		}
		if err != nil {
			return nil, fmt.Errorf("copying hive %s: %w", name, err)
		}
	}
	b := &hiveBuilder{}
	sys, sw := hs["SYSTEM"], hs["SOFTWARE"]
	b.set(sys, `ControlSet001\Services\Svc001`, "Start", regf.RegDWord, regf.DWordData(4))
	b.set(sys, `ControlSet001\Services\SynthChild`, "ImagePath", regf.RegExpandSZ, regf.StringData(`%SystemRoot%\synth.exe`))
	if err := sys.DeleteKey(`ControlSet001\Services\Svc002`); err != nil {
		return nil, err
	}
	if k := sys.Lookup(`ControlSet001\Services\Svc003`); k != nil {
		k.DeleteValue("DependOnService")
	}
	b.set(sw, `Microsoft\Windows NT\CurrentVersion`, "UBR", regf.RegDWord, regf.DWordData(uint32(rng.IntN(3000))))
	b.set(sw, `Microsoft\SynthApp\Settings`, "Level", regf.RegDWord, regf.DWordData(uint32(rng.IntN(10))))
	if err := sw.DeleteKey(`Classes\.ext07`); err != nil {
		return nil, err
	}
	if b.err != nil {
		return nil, b.err
	}
	t := epoch.Add(24 * time.Hour)
	for _, h := range hs {
		stamp(h, t)
	}
	return hs, nil
}

// DeltaHives returns the delta hive of each config hive: Diff(base, child).
func DeltaHives(base, child map[string]*regf.Hive) (map[string]*regf.Hive, error) {
	ds := map[string]*regf.Hive{}
	for _, name := range HiveNames {
		d, err := regf.Diff(base[name], child[name])
		if err != nil {
			return nil, fmt.Errorf("diff of hive %s: %w", name, err)
		}
		d.Modified = epoch.Add(24 * time.Hour)
		ds[name] = d
	}
	return ds, nil
}

// UVMBCD returns the utility VM's BCD store: a boot manager whose default
// is a Windows loader with the public boot elements set.
func UVMBCD() (*regf.Hive, error) {
	const loader = "{c6ea8e8b-4c0b-4f8a-9b0e-5a1c6f2b8d11}"
	s := bcd.New()
	steps := []func() error{
		func() error { return s.CreateObject(bcd.BootManager, 0x10100002) },
		func() error { return s.CreateObject(loader, 0x10200003) },
		func() error { return s.SetObject(bcd.BootManager, bcd.DefaultObject, loader) },
		func() error { return s.SetString(loader, bcd.Description, "Windows Utility VM (synthetic)") },
		func() error {
			return s.SetBootPaths(loader, `\UtilityVM\Files\Windows\System32\winload.efi`, `\UtilityVM\Files\Windows`)
		},
		func() error { return s.SetBoolean(loader, bcd.RestartOnFailure, true) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("building the BCD store: %w", err)
		}
	}
	stamp(s.Hive(), epoch)
	return s.Hive(), nil
}

// hiveBuilder keeps the first error of a run of edits.
type hiveBuilder struct{ err error }

func (b *hiveBuilder) set(h *regf.Hive, path, name string, typ regf.ValueType, data []byte) {
	if b.err != nil {
		return
	}
	k, err := h.CreateKey(path)
	if err == nil {
		err = k.SetValue(name, typ, data)
	}
	if err != nil {
		b.err = fmt.Errorf("setting %s\\%s: %w", path, name, err)
	}
}

// stamp sets every key's and the hive's time, so Marshal is deterministic.
func stamp(h *regf.Hive, t time.Time) {
	h.Modified = t
	_ = h.Root.Walk(func(k *regf.Key) error { k.Modified = t; return nil })
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}
