package uvmlayer

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/bcd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

const (
	loader  = "{11111111-2222-3333-4444-555555555555}"
	cimPath = `cim-layers\layer1.cim`
)

// makeLayer builds the minimal base layer folder Process needs: a BCD
// store (synthetic, or bcdFile's bytes), a SYSTEM hive and a SOFTWARE hive
// of the given build.
func makeLayer(t *testing.T, build string, bcdFile []byte) string {
	t.Helper()
	dir := t.TempDir()
	p := func(rel string) string {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		return path
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	if bcdFile == nil {
		s := bcd.New()
		must(s.CreateObject(bcd.BootManager, 0x10100002))
		must(s.CreateObject(loader, 0x10200003))
		must(s.SetObject(bcd.BootManager, bcd.DefaultObject, loader))
		must(s.SetString(loader, bcd.Description, "Microsoft Windows Server"))
		must(s.Hive().WriteFile(p(BCDPath)))
	} else {
		must(os.WriteFile(p(BCDPath), bcdFile, 0o644))
	}
	sys := regf.New()
	k, err := sys.CreateKey(`ControlSet001\Services\wcifs`)
	must(err)
	must(k.SetValue("Start", regf.RegDWord, regf.DWordData(2)))
	must(sys.WriteFile(p(SystemHive)))
	sw := regf.New()
	if build != "" {
		k, err := sw.CreateKey(`Microsoft\Windows NT\CurrentVersion`)
		must(err)
		must(k.SetValue("CurrentBuild", regf.RegSZ, regf.StringData(build)))
	}
	must(sw.WriteFile(p(SoftwareHive)))
	must(os.WriteFile(p("UtilityVM/Files/Windows/System32/winload.efi"), []byte("MZ"), 0o644))
	return dir
}

// snapshot records every file under dir with its bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		m[path[len(dir):]] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func needTools(t *testing.T) {
	t.Helper()
	testutil.NeedTool(t, "mkntfs")
}

func TestProcessValidated(t *testing.T) {
	needTools(t)
	testutil.NeedRoot(t) // loop device and read-only mount of the NTFS partition
	for _, tool := range []string{"qemu-img", "vhdiinfo", "sgdisk", "ntfsinfo", "ntfs-3g", "hivexsh", "losetup"} {
		testutil.NeedTool(t, tool)
	}
	dir := makeLayer(t, "26100", nil)
	tmp := t.TempDir()
	res, err := Process(context.Background(), dir, cimPath, Options{TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Processed || res.Build != 26100 ||
		!reflect.DeepEqual(res.Changed, []string{BaseVHDX, BCDPath, SystemHive, TemplateVHDX}) {
		t.Fatalf("result %+v", res)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
	base, tmpl := filepath.Join(dir, BaseVHDX), filepath.Join(dir, TemplateVHDX)

	// Only written blocks landed: the NTFS metadata and its 51 MiB $LogFile.
	fi, err := os.Stat(base)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 80<<20 {
		t.Errorf("base VHDX is %d bytes; only the written blocks should be there", fi.Size())
	}
	t.Logf("base VHDX: %d bytes", fi.Size())

	// qemu-img: format, size, block size, consistency of the base. QEMU
	// cannot open differencing VHDX files: it must refuse the template as one.
	var info struct {
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		ClusterSize    int64  `json:"cluster-size"`
		BackingFile    string `json:"backing-filename"`
		FormatSpecific any    `json:"format-specific"`
	}
	if err := json.Unmarshal(testutil.Run(t, "qemu-img", "info", "--output=json", base), &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "vhdx" || info.VirtualSize != DiskSize || info.ClusterSize != BlockSize {
		t.Errorf("qemu-img info %s: %+v", BaseVHDX, info)
	}
	testutil.Run(t, "qemu-img", "check", "-f", "vhdx", base)
	if out, err := exec.Command("qemu-img", "info", "-f", "vhdx", tmpl).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "Operation not supported") {
		t.Errorf("qemu-img info %s: %v\n%s", TemplateVHDX, err, out)
	}

	// vhdiinfo (libvhdi) on both: types, sizes, the template's parent.
	bd, err := vhdx.Open(base, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	baseData := bd.DataWriteGUID()
	bd.Close()
	for _, tc := range []struct {
		path string
		want map[string]string
	}{
		{base, map[string]string{"Disk type": "Dynamic", "Media size": "10 GiB (10737418240 bytes)", "Bytes per sector": "512 bytes"}},
		{tmpl, map[string]string{"Disk type": "Differential", "Media size": "10 GiB (10737418240 bytes)",
			"Parent identifier": baseData.String(), "Parent filename": base}},
	} {
		got := vhdiinfo(t, tc.path)
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("vhdiinfo %s: %s = %q, want %q", tc.path, k, got[k], v)
			}
		}
	}
	// Neither tool prints a differencing disk's block size: read it ourselves.
	td, err := vhdx.Open(tmpl, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ti := td.Info()
	td.Close()
	if ti.BlockSize != BlockSize || ti.ParentLocator["relative_path"] != `.\SystemTemplateBase.vhdx` {
		t.Errorf("template: block size %d, locator %v", ti.BlockSize, ti.ParentLocator)
	}

	// sgdisk on the raw image: a clean GPT, MSR then basic data, our ids.
	raw := filepath.Join(t.TempDir(), "base.raw")
	testutil.Run(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", base, raw)
	out := string(testutil.Run(t, "sgdisk", "-v", raw))
	if !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	out = string(testutil.Run(t, "sgdisk", "-p", raw))
	for _, want := range []string{
		"Disk identifier (GUID): " + strings.ToUpper(res.DiskID.String()),
		"   1            2048           34815   16.0 MiB    0C01  ",
		"   2           34816        20969471   10.0 GiB    0700  Basic data partition",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("sgdisk -p lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "\n   ") != 2 {
		t.Errorf("sgdisk -p: not exactly two partitions:\n%s", out)
	}
	out = string(testutil.Run(t, "sgdisk", "-i", "2", raw))
	if !strings.Contains(out, "Partition unique GUID: "+strings.ToUpper(res.PartitionID.String())) {
		t.Errorf("sgdisk -i 2:\n%s", out)
	}

	// ntfs-3g on the data partition, attached read-only at its offset.
	dev := strings.TrimSpace(string(testutil.Run(t, "losetup", "--find", "--show", "--read-only",
		"--offset", "17825792", "--sizelimit", "10718543872", raw)))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	out = string(testutil.Run(t, "ntfsinfo", "-m", dev))
	for _, want := range []string{"Volume Name: " + VolumeLabel, "Cluster Size: 4096", "Sector Size: 512",
		"Volume Size in Clusters: 2616831"} {
		if !strings.Contains(out, want) {
			t.Errorf("ntfsinfo lacks %q:\n%s", want, out)
		}
	}
	mnt := t.TempDir()
	testutil.Run(t, "ntfs-3g", "-o", "ro", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	if out := string(testutil.Run(t, "findmnt", "-n", "-o", "FSTYPE,OPTIONS", mnt)); !strings.HasPrefix(out, "fuseblk ro,") {
		t.Errorf("findmnt: %s", out)
	}
	if _, err := os.ReadDir(mnt); err != nil {
		t.Errorf("reading the mounted NTFS root: %v", err)
	}

	// hivex on the SYSTEM hive: the four CIM-boot values.
	hx := func(hive string, lines ...string) []string {
		t.Helper()
		sf := filepath.Join(t.TempDir(), "script")
		os.WriteFile(sf, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
		return strings.Split(strings.TrimSpace(string(testutil.Run(t, "hivexsh", "-f", sf, hive))), "\n")
	}
	got := hx(filepath.Join(dir, SystemHive),
		`cd \ControlSet001\Control`, "lsval",
		`cd \ControlSet001\Services\UnionFS`, "lsval",
		`cd \ControlSet001\Services\wcifs`, "lsval",
		`cd \Setup`, "lsval")
	want := []string{`"BootContainerGuid"="{b890454c-80de-4e98-a7ab-56b74b4fbd0c}"`,
		`"Start"=dword:00000000`, `"Start"=dword:00000004`, `"BootPathOverride"="\\Windows\\"`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SYSTEM values %q, want %q", got, want)
	}

	// hivex on the BCD: primarydevice names the partition sgdisk reports.
	got = hx(filepath.Join(dir, BCDPath),
		`cd \Objects\`+bcd.CompositeOptions+`\Elements\3100000e`, "lsval",
		`cd \Objects\`+loader+`\Elements\21000001`, "lsval",
		`cd \Objects\`+bcd.CimfsOptions+`\Elements\32000011`, "lsval")
	part := hex.EncodeToString(res.PartitionID[:])
	disk := hex.EncodeToString(res.DiskID[:])
	wantPart := `"Element"=hex(3):` + commaHex(strings.Repeat("0", 32)+"060000000000000048000000"+"00000000"+
		part+"0000000000000000"+disk+strings.Repeat("0", 32))
	if len(got) != 3 || got[0] != wantPart {
		t.Errorf("primarydevice %q\nwant %q", got, wantPart)
	}
	if len(got) == 3 && (!strings.HasPrefix(got[1], `"Element"=hex(3):20,72,78,e1,`) ||
		got[2] != `"Element"="\\cim-layers\\layer1.cim"`) {
		t.Errorf("osdevice/cimfsrootdirectory %q", got[1:])
	}
}

// vhdiinfo runs libvhdi's vhdiinfo and returns its "name : value" lines.
func vhdiinfo(t *testing.T, path string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(string(testutil.Run(t, "vhdiinfo", path)), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func commaHex(h string) string {
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// TestRollback fails Process after each step and checks the layer folder
// is exactly as before, temp files included.
func TestRollback(t *testing.T) {
	needTools(t)
	errInjected := errors.New("injected")
	for _, at := range []Step{StepBaseVHDX, StepReadIDs, StepBCD, StepSystemHive, StepTemplateVHDX} {
		dir := makeLayer(t, "26100", nil)
		tmp := t.TempDir()
		before := snapshot(t, dir)
		var seen []Step
		_, err := Process(context.Background(), dir, cimPath, Options{TempDir: tmp, AfterStep: func(s Step) error {
			seen = append(seen, s)
			if s == at {
				return errInjected
			}
			return nil
		}})
		if !errors.Is(err, errInjected) {
			t.Fatalf("fail after %s: %v", at, err)
		}
		if seen[len(seen)-1] != at {
			t.Errorf("fail after %s: steps %v", at, seen)
		}
		if after := snapshot(t, dir); !reflect.DeepEqual(before, after) {
			t.Errorf("fail after %s: layer folder changed: %d files before, %d after", at, len(before), len(after))
			for k := range after {
				if before[k] != after[k] {
					t.Errorf("  %s differs", k)
				}
			}
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Errorf("fail after %s: temp files left: %v", at, ents)
		}
	}
}

// TestFailuresInsideSteps breaks an input so a step itself fails.
func TestFailuresInsideSteps(t *testing.T) {
	needTools(t)
	t.Run("corrupt SYSTEM hive", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		os.WriteFile(filepath.Join(dir, SystemHive), []byte("not a hive"), 0o644)
		before := snapshot(t, dir)
		if _, err := Process(context.Background(), dir, cimPath, Options{TempDir: t.TempDir()}); err == nil ||
			!strings.Contains(err.Error(), "SYSTEM") {
			t.Fatalf("corrupt SYSTEM: %v", err)
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed (BCD not restored or VHDX left)")
		}
	})
	t.Run("no temp dir", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		before := snapshot(t, dir)
		if _, err := Process(context.Background(), dir, cimPath, Options{TempDir: filepath.Join(dir, "nope")}); err == nil {
			t.Fatal("missing temp dir accepted")
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		before := snapshot(t, dir)
		ctx, cancel := context.WithCancel(context.Background())
		_, err := Process(ctx, dir, cimPath, Options{TempDir: t.TempDir(), AfterStep: func(s Step) error {
			if s == StepBCD {
				cancel()
			}
			return nil
		}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: %v", err)
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed")
		}
	})
}

func TestBadInputChangesNothing(t *testing.T) {
	ctx := context.Background()
	t.Run("existing base VHDX", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		os.WriteFile(filepath.Join(dir, BaseVHDX), []byte("someone's file"), 0o644)
		before := snapshot(t, dir)
		if _, err := Process(ctx, dir, cimPath, Options{}); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("existing base: %v", err)
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed")
		}
	})
	t.Run("missing BCD", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		os.Remove(filepath.Join(dir, BCDPath))
		before := snapshot(t, dir)
		if _, err := Process(ctx, dir, cimPath, Options{}); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("missing BCD: %v", err)
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed")
		}
	})
	t.Run("BCD is a symlink", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		outside := filepath.Join(t.TempDir(), "BCD")
		bcdPath := filepath.Join(dir, BCDPath)
		os.Rename(bcdPath, outside)
		os.Symlink(outside, bcdPath)
		want, _ := os.ReadFile(outside)
		before := snapshot(t, dir)
		if _, err := Process(ctx, dir, cimPath, Options{}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Fatalf("symlinked BCD: %v", err)
		}
		if got, _ := os.ReadFile(outside); !bytes.Equal(got, want) || !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("a file changed")
		}
	})
	t.Run("no build without Force", func(t *testing.T) {
		dir := makeLayer(t, "", nil)
		before := snapshot(t, dir)
		if _, err := Process(ctx, dir, cimPath, Options{}); err == nil || !strings.Contains(err.Error(), "Force") {
			t.Fatalf("no build: %v", err)
		}
		if !reflect.DeepEqual(before, snapshot(t, dir)) {
			t.Error("layer folder changed")
		}
	})
	t.Run("empty CIM path", func(t *testing.T) {
		dir := makeLayer(t, "26100", nil)
		if _, err := Process(ctx, dir, "", Options{}); err == nil {
			t.Fatal("empty CIM path accepted")
		}
	})
}

func TestSkipped(t *testing.T) {
	ctx := context.Background()
	// No utility VM at all.
	dir := t.TempDir()
	res, err := Process(ctx, dir, cimPath, Options{})
	if err != nil || res.Processed || len(res.Changed) != 0 {
		t.Fatalf("no UtilityVM: %+v %v", res, err)
	}
	// A 20348 utility VM is too old for CIM boot.
	dir = makeLayer(t, "20348", nil)
	before := snapshot(t, dir)
	res, err = Process(ctx, dir, cimPath, Options{})
	if err != nil || res.Processed || res.Build != 20348 {
		t.Fatalf("build 20348: %+v %v", res, err)
	}
	if !reflect.DeepEqual(before, snapshot(t, dir)) {
		t.Error("layer folder changed")
	}
}

func TestReadBuild(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, value, data string
		want              int
	}{
		{"CurrentBuild", "CurrentBuild", "26100", 26100},
		{"fallback", "CurrentBuildNumber", "20348", 20348},
		{"junk", "CurrentBuild", "2o348", 0},
		{"none", "ProductName", "Windows", 0},
	} {
		h := regf.New()
		k, _ := h.CreateKey(`Microsoft\Windows NT\CurrentVersion`)
		k.SetValue(tc.value, regf.RegSZ, regf.StringData(tc.data))
		p := filepath.Join(dir, tc.name)
		if err := h.WriteFile(p); err != nil {
			t.Fatal(err)
		}
		n, err := ReadBuild(p)
		if n != tc.want || (err == nil) != (tc.want != 0) {
			t.Errorf("%s: %d %v", tc.name, n, err)
		}
	}
	if _, err := ReadBuild(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing hive: %v", err)
	}
}

// TestRealBCD runs the step on a Windows-made BCD store, forced (its
// SOFTWARE hive says 20348), with {default} resolved through the boot
// manager's 23000003 element.
func TestRealBCD(t *testing.T) {
	needTools(t)
	testutil.NeedTool(t, "xz")
	src := filepath.Join(testutil.SharedTestdata(t, "windows", "hives"), "BCD.xz")
	raw, err := exec.Command("xz", "-dc", src).Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := makeLayer(t, "20348", raw)
	res, err := Process(context.Background(), dir, cimPath, Options{Force: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Processed {
		t.Fatal("Force did not process a 20348 utility VM")
	}
	h, err := regf.ReadFile(filepath.Join(dir, BCDPath))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := bcd.Open(h)
	const realDefault = "{733b62e5-f608-11eb-825c-c112f60133ab}"
	if def, err := s.String(bcd.BootManager, bcd.DefaultObject); err != nil || def != realDefault {
		t.Fatalf("bootmgr default %q %v", def, err)
	}
	wantComposite, _ := bcd.EncodeDevice("composite=0," + bcd.CompositeOptions)
	for _, et := range []bcd.ElementType{bcd.Device, bcd.OSDevice} {
		v, err := s.Element(realDefault, et)
		if err != nil || !bytes.Equal(v.Data, wantComposite) {
			t.Errorf("%s element %s: %v %v", realDefault, et, v, err)
		}
	}
	v, err := s.Element(bcd.CompositeOptions, bcd.PrimaryDevice)
	if err != nil || len(v.Data) != 0x58 || !bytes.Equal(v.Data[0x20:0x30], res.PartitionID[:]) ||
		!bytes.Equal(v.Data[0x38:0x48], res.DiskID[:]) {
		t.Errorf("primarydevice %v %v", v, err)
	}
	if p, _ := s.String(realDefault, bcd.SystemRoot); p != `\UtilityVM\Files\Windows` {
		t.Errorf("systemroot %q", p)
	}
}

// A layer prepared in a temporary folder defers the template; made after
// the folder's rename, it names the base at the folder's final place.
func TestDeferredTemplateNamesFinalPlace(t *testing.T) {
	needTools(t)
	dir := makeLayer(t, "26100", nil)
	res, err := Process(context.Background(), dir, cimPath, Options{TempDir: t.TempDir(), DeferTemplate: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Processed || !reflect.DeepEqual(res.Changed, []string{BaseVHDX, BCDPath, SystemHive}) {
		t.Fatalf("result %+v", res)
	}
	if _, err := os.Stat(filepath.Join(dir, TemplateVHDX)); !os.IsNotExist(err) {
		t.Fatalf("deferred template made anyway: %v", err)
	}
	final := filepath.Join(t.TempDir(), "layers", "base")
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir, final); err != nil {
		t.Fatal(err)
	}
	if err := MakeTemplate(final); err != nil {
		t.Fatal(err)
	}
	d, err := vhdx.Open(filepath.Join(final, TemplateVHDX), vhdx.OpenOptions{ReadOnly: true, NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	loc := d.Info().ParentLocator
	if want := filepath.Join(final, BaseVHDX); loc["absolute_win32_path"] != want || loc["relative_path"] != `.\SystemTemplateBase.vhdx` {
		t.Errorf("parent locator %v, want absolute_win32_path %s", loc, want)
	}
	// A second one is refused, and a layer without a base makes none.
	if err := MakeTemplate(final); err == nil {
		t.Error("second template made")
	}
	empty := t.TempDir()
	if err := MakeTemplate(empty); err == nil {
		t.Error("template without a base made")
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("failed MakeTemplate left %v", ents)
	}
}
