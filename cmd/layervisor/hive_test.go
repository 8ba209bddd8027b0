package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
)

// newHiveCLI runs the real binary in a fresh working directory, so tests
// name hive files relatively; hive commands need neither root nor a store.
func newHiveCLI(t *testing.T) *cli {
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root")}
	t.Chdir(filepath.Dir(c.root)) // after layervisorBin, which builds "."
	return c
}

func TestHiveCLIEditAndRead(t *testing.T) {
	c := newHiveCLI(t)
	h := "h.hive"
	c.ok("hive", "create", h)
	c.fail("already exists", "hive", "create", h)
	c.ok("hive", "set", h, `Software\Vendor`, "name", "Vendor Ltd")
	c.ok("hive", "set", h, `Software\Vendor`, "@", "default")
	c.ok("hive", "set", h, `Software\Vendor`, "count", "--type", "REG_DWORD", "0x2a")
	c.ok("hive", "set", h, `Software\Vendor`, "big", "-t", "qword", "18446744073709551615")
	c.ok("hive", "set", h, `Software\Vendor`, "list", "-t", "REG_MULTI_SZ", "a", "b c")
	c.ok("hive", "set", h, `Software\Vendor`, "blob", "-t", "REG_BINARY", "de,ad,be,ef")
	c.ok("hive", "set", h, `Software\Vendor`, "odd", "-t", "0x20001", "ff")
	c.ok("hive", "set", h, `Software\Vendor`, "raw", "-t", "REG_SZ", "--hex", "41,00,00,00")
	c.ok("hive", "set", h, `Software\Empty\Key`)

	if got := c.ok("hive", "get", h, `software\VENDOR`, "COUNT"); got != "42\n" {
		t.Errorf("get count = %q", got)
	}
	if got := c.ok("hive", "get", h, `Software\Vendor`, "@"); got != "default\n" {
		t.Errorf("get @ = %q", got)
	}
	if got := c.ok("hive", "get", h, `Software\Vendor`, "list"); got != "a\nb c\n" {
		t.Errorf("get list = %q", got)
	}
	if got := c.ok("hive", "get", h, `Software\Vendor`, "raw"); got != "A\n" {
		t.Errorf("get raw = %q", got)
	}
	var v struct {
		Type string
		Data any
		Hex  string
	}
	if err := json.Unmarshal([]byte(c.ok("--json", "hive", "get", h, `Software\Vendor`, "blob")), &v); err != nil ||
		v.Type != "REG_BINARY" || v.Hex != "deadbeef" {
		t.Errorf("get --json blob: %+v %v", v, err)
	}

	var tree struct {
		Name    string
		Subkeys []struct {
			Name    string
			Subkeys []struct {
				Name   string
				Values []struct{ Name, Type string }
			}
		}
		Hive struct{ Version string }
	}
	if err := json.Unmarshal([]byte(c.ok("--json", "hive", "dump", h)), &tree); err != nil {
		t.Fatal(err)
	}
	if tree.Name != "ROOT" || tree.Hive.Version != "1.5" || len(tree.Subkeys) != 1 ||
		len(tree.Subkeys[0].Subkeys) != 2 || len(tree.Subkeys[0].Subkeys[1].Values) != 8 {
		t.Errorf("dump --json: %+v", tree)
	}
	dump := c.ok("hive", "dump", h, "Software")
	for _, want := range []string{"Software\n", "  Vendor\n", `"count" REG_DWORD 42 (0x2a)`, `@ REG_SZ "default"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}

	c.ok("hive", "delete", h, `Software\Vendor`, "count")
	c.fail("not found", "hive", "get", h, `Software\Vendor`, "count")
	c.ok("hive", "delete", h, `Software\Empty`)
	c.fail("not found", "hive", "delete", h, `Software\Empty`)
	c.fail("not found", "hive", "delete", h, `Software\Vendor`, "nope")

	// The independent reader agrees.
	if out := testutil.Run(t, "hivexget", h, `\Software\Vendor`, "name"); strings.TrimSpace(string(out)) != "Vendor Ltd" {
		t.Errorf("hivexget: %q", out)
	}
}

func TestHiveCLIImportExport(t *testing.T) {
	c := newHiveCLI(t)
	h := "h.hive"
	c.ok("hive", "create", h)
	reg := `Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\SOFTWARE\App]
"s"="text"
"d"=dword:00000007
"e"=hex(2):25,00,00,00
@="def"

[HKEY_LOCAL_MACHINE\SOFTWARE\App\Sub]
"x"=hex:01

[-HKEY_LOCAL_MACHINE\SOFTWARE\App\Sub]
`
	os.WriteFile("in.reg", []byte(reg), 0o644)
	c.ok("hive", "import", h, "in.reg", "--prefix", `HKEY_LOCAL_MACHINE\SOFTWARE`)
	exported := c.ok("hive", "export", h, "App", "--prefix", `HKEY_LOCAL_MACHINE\SOFTWARE`)
	want := `Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\SOFTWARE\App]
@=hex(1):64,00,65,00,66,00,00,00
"d"=dword:00000007
"e"=hex(2):25,00,00,00
"s"=hex(1):74,00,65,00,78,00,74,00,00,00

`
	if exported != want {
		t.Errorf("export:\n%s\nwant:\n%s", exported, want)
	}
	// Our export is what hivexregedit prints for the same hive.
	if theirs := testutil.Run(t, "hivexregedit", "--export", "--prefix", `HKEY_LOCAL_MACHINE\SOFTWARE`, h, `\App`); string(theirs) != want {
		t.Errorf("hivexregedit --export differs:\n%s", theirs)
	}

	// A bad file changes nothing and the error names file and line.
	before, _ := os.ReadFile(h)
	os.WriteFile("bad.reg", []byte("[\\New]\n\"v\"=dword:zz\n"), 0o644)
	c.fail("bad.reg: line 2", "hive", "import", h, "bad.reg")
	after, _ := os.ReadFile(h)
	if !bytes.Equal(before, after) {
		t.Errorf("failed import changed the hive")
	}
	c.fail("no such file", "hive", "import", h, "missing.reg")
}

func TestHiveCLIMergeDiff(t *testing.T) {
	c := newHiveCLI(t)
	c.ok("hive", "create", "base")
	c.ok("hive", "set", "base", `K`, "keep", "1")
	c.ok("hive", "set", "base", `K`, "drop", "2")
	c.ok("hive", "set", "base", `Gone\Sub`, "x", "3")
	b, _ := os.ReadFile("base")
	os.WriteFile("target", b, 0o644)
	c.ok("hive", "delete", "target", `K`, "drop")
	c.ok("hive", "set", "target", `K`, "new", "-t", "REG_DWORD", "9")
	c.ok("hive", "delete", "target", `Gone`)
	c.ok("hive", "diff", "base", "target", "delta")
	if dump := c.ok("hive", "dump", "delta"); !strings.Contains(dump, "Gone (tombstone)") ||
		!strings.Contains(dump, `"drop" REG_NONE (deleted)`) {
		t.Errorf("delta dump:\n%s", dump)
	}
	c.ok("hive", "merge", "base", "delta", "merged")
	want := c.ok("hive", "export", "target")
	if got := c.ok("hive", "export", "merged"); got != want {
		t.Errorf("merge(base, diff(base, target)) exports\n%s\nwant\n%s", got, want)
	}
	// Bad input never leaves a half-written output.
	os.WriteFile("junk", []byte("not a hive"), 0o644)
	c.fail("junk", "hive", "merge", "base", "junk", "out")
	if _, err := os.Stat("out"); err == nil {
		t.Errorf("failed merge wrote its output")
	}
	c.fail("junk", "hive", "diff", "junk", "base", "out")
}

func TestHiveCLICimBootAndHelp(t *testing.T) {
	c := newHiveCLI(t)
	c.ok("hive", "create", "SYSTEM")
	c.ok("hive", "cimboot", "SYSTEM")
	h, err := regf.ReadFile("SYSTEM")
	if err != nil {
		t.Fatal(err)
	}
	if v := h.Lookup(`ControlSet001\Services\wcifs`).Value("Start"); v == nil {
		t.Errorf("cimboot did not set wcifs Start")
	}
	for _, sub := range []string{"create", "dump", "get", "set", "delete", "import", "export", "merge", "diff", "cimboot"} {
		out := c.ok("hive", sub, "--help")
		if !strings.Contains(out, "Usage:") || !strings.Contains(out, "layervisor hive "+sub) {
			t.Errorf("hive %s --help:\n%s", sub, out)
		}
	}
	c.fail("accepts", "hive", "get", "SYSTEM")
}
