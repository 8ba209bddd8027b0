package bcd

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
)

const (
	diskGUID = "{11223344-5566-7788-99aa-bbccddeeff00}"
	partGUID = "{a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90}"
	// On-disk (mixed-endian) bytes of the two GUIDs above.
	diskHex = "4433221166558877" + "99aabbccddeeff00"
	partHex = "d4c3b2a1f6e51807293a4b5c6d7e8f90"
	zero16  = "00000000000000000000000000000000"
	// {763e9fea-...}, {e1787220-...}, {c63c9bdf-...}, {b890454c-...} on disk.
	cimfsOptHex = "ea9f3e762d504f43aad95fabe9c91a7b"
	compOptHex  = "207278e17fd1e749977ad8fe4c8537e2"
	vmbusHex    = "df9b3cc6a55f0842b03f6b458b365592"
	bootCtrHex  = "4c4590b8de80984ea7ab56b74b4fbd0c"
)

// wantDevice holds the element values §4.1 of the fact sheet gives.
var wantDevice = map[string]string{
	// options(none) | type 6, flags 0, size 0x48, 0 | partition GUID | pad | style 0 (GPT) | disk GUID | pad
	"gpt_partition=" + diskGUID + ";" + partGUID: zero16 + "06000000" + "00000000" + "48000000" + "00000000" +
		partHex + "00000000" + "00000000" + diskHex + strings.Repeat("00", 16),
	// options(none) | type 7, size 0x20 | interface GUID
	"vmbus=" + VmbusDevice: zero16 + "07000000" + "00000000" + "20000000" + "00000000" + vmbusHex,
	// options {e1787220} | type 0xA, size 0x2C | signature 0, version 0, offsets 0
	"composite=0," + CompositeOptions: compOptHex + "0a000000" + "00000000" + "2c000000" + "00000000" +
		zero16 + "00000000" + "00000000" + "00000000",
	// options {763e9fea} | type 0xB, size 0x30 | version 2, parent/root offsets and length 0 | volume
	"cimfs=" + BootContainer + "," + CimfsOptions: cimfsOptHex + "0b000000" + "00000000" + "30000000" + "00000000" +
		"02000000" + "00000000" + "00000000" + "00000000" + bootCtrHex,
}

func TestEncodeDevice(t *testing.T) {
	for spec, want := range wantDevice {
		got, err := EncodeDevice(spec)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
			continue
		}
		if hex.EncodeToString(got) != want {
			t.Errorf("%s:\n got %x\nwant %s", spec, got, want)
		}
	}
	for _, bad := range []string{
		"gpt_partition=" + diskGUID, "gpt_partition={x};{y}", "vmbus=c63c9bdf-5fa5-4208-b03f-6b458b365592",
		"composite=1," + CompositeOptions, "composite=0", "cimfs=" + BootContainer, "locate=x", "boot",
	} {
		if _, err := EncodeDevice(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// realBCD is the BCD store of a Windows 10 machine (made by Windows).
func realBCD(t *testing.T) string {
	t.Helper()
	testutil.NeedTool(t, "xz")
	src := filepath.Join(testutil.SharedTestdata(t, "windows", "hives"), "BCD.xz")
	out, err := exec.Command("xz", "-dc", src).Output()
	if err != nil {
		t.Fatalf("xz -dc %s: %v", src, err)
	}
	p := filepath.Join(t.TempDir(), "BCD")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const realDefault = "{733b62e5-f608-11eb-825c-c112f60133ab}" // the bootmgr's 23000003

func TestConfigureCIMBootRealStore(t *testing.T) {
	p := realBCD(t)
	before, err := regf.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(before)
	if err != nil {
		t.Fatal(err)
	}
	untouched, err := s.Object("{733b62e4-f608-11eb-825c-c112f60133ab}")
	if err != nil {
		t.Fatal(err)
	}
	if err := regf.EditFile(p, func(h *regf.Hive) error {
		s, err := Open(h)
		if err != nil {
			return err
		}
		return s.ConfigureCIMBoot(diskGUID, partGUID, `cim-layers\layer1.cim`)
	}); err != nil {
		t.Fatal(err)
	}

	// hivex, an independent reader, sees every element with the bytes of §4.1.
	type elem struct{ obj, typ, want string }
	dev := func(spec string) string { return "hex(3):" + commaHex(wantDevice[spec]) }
	composite := dev("composite=0," + CompositeOptions)
	elems := []elem{
		{realDefault, "16000053", "hex(3):01"},
		{CimfsOptions, "12000004", `"CimFS Device Options"`},
		{CimfsOptions, "31000012", dev("vmbus=" + VmbusDevice)},
		{CimfsOptions, "32000011", `"\\cim-layers\\layer1.cim"`},
		{CompositeOptions, "12000004", `"Composite Device Options"`},
		{CompositeOptions, "3100000e", dev("gpt_partition=" + diskGUID + ";" + partGUID)},
		{CompositeOptions, "3100000f", dev("cimfs=" + BootContainer + "," + CimfsOptions)},
		{realDefault, "11000001", composite},
		{realDefault, "21000001", composite},
		{realDefault, "12000002", `"\\UtilityVM\\Files\\Windows\\System32\\winload.efi"`},
		{realDefault, "22000002", `"\\UtilityVM\\Files\\Windows"`},
	}
	var script strings.Builder
	for _, e := range elems {
		script.WriteString(`cd \Objects\` + e.obj + `\Elements\` + e.typ + "\nlsval\n")
	}
	for _, o := range []string{CimfsOptions, CompositeOptions} {
		script.WriteString(`cd \Objects\` + o + `\Description` + "\nlsval\n")
	}
	sf := filepath.Join(t.TempDir(), "script")
	os.WriteFile(sf, []byte(script.String()), 0o644)
	lines := strings.Split(strings.TrimSpace(string(testutil.Run(t, "hivexsh", "-f", sf, p))), "\n")
	if len(lines) != len(elems)+2 {
		t.Fatalf("hivexsh printed %d lines, want %d:\n%s", len(lines), len(elems)+2, strings.Join(lines, "\n"))
	}
	for i, e := range elems {
		// hivex prints REG_SZ with its escapes doubled: compare unescaped.
		got := strings.ReplaceAll(lines[i], `\\`, `\`)
		want := `"Element"=` + strings.ReplaceAll(e.want, `\\`, `\`)
		if got != want {
			t.Errorf("%s %s:\n got %s\nwant %s", e.obj, e.typ, got, want)
		}
	}
	for _, l := range lines[len(elems):] {
		if l != `"Type"=dword:30000000` {
			t.Errorf("device object type: %s", l)
		}
	}

	// Our reader agrees; other objects are untouched; re-running changes nothing.
	after, err := regf.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := Open(after)
	if o, err := s2.Object(Default); err != nil || o.ID != realDefault {
		t.Fatalf("{default} resolves to %v (%v)", o, err)
	}
	if o, _ := s2.Object(untouched.ID); !reflect.DeepEqual(o, untouched) {
		t.Errorf("resume object changed: %+v", o)
	}
	objs1, _ := s2.Objects()
	if err := s2.ConfigureCIMBoot(diskGUID, partGUID, `\cim-layers\layer1.cim`); err != nil {
		t.Fatal(err)
	}
	objs2, _ := s2.Objects()
	if !reflect.DeepEqual(objs1, objs2) {
		t.Error("re-running ConfigureCIMBoot changed the store")
	}
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

func TestConfigureCIMBootBadInput(t *testing.T) {
	s := New()
	s.CreateObject(BootManager, 0x10100002)
	s.CreateObject(loader, 0x10200003)
	s.SetObject(BootManager, DefaultObject, loader)
	before, err := s.Hive().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][3]string{
		{"{d}", partGUID, `\x.cim`},
		{diskGUID, "not-a-guid", `\x.cim`},
		{diskGUID, partGUID, ""},
	} {
		if err := s.ConfigureCIMBoot(args[0], args[1], args[2]); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	s.SetObject(BootManager, DefaultObject, "{00000000-0000-0000-0000-000000000001}")
	if err := s.ConfigureCIMBoot(diskGUID, partGUID, `\x.cim`); err == nil {
		t.Error("dangling {default} accepted")
	}
	s.SetObject(BootManager, DefaultObject, loader)
	after, _ := s.Hive().Marshal()
	if !bytes.Equal(before, after) {
		t.Error("failed ConfigureCIMBoot changed the store")
	}
	// A device object id already used by an object of another type is refused.
	s.CreateObject(CimfsOptions, 0x10200003)
	if err := s.ConfigureCIMBoot(diskGUID, partGUID, `\x.cim`); err == nil {
		t.Error("CimFS options id taken by a loader accepted")
	}
}
