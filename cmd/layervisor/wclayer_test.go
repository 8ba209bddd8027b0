package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWclayerCLI(t *testing.T) {
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root")}
	dir := t.TempDir()
	p := func(s string) string { return filepath.Join(dir, s) }
	c.ok("dev", "build-wclayer", "--uvm", "--files", "120", "--size-mb", "2", p("base.tar"))
	c.ok("dev", "build-wclayer", "--files", "120", "--size-mb", "2", "--child", "9", p("child.tar"))

	if out := c.ok("wclayer", "import", p("base.tar"), p("s/base")); !strings.Contains(out, "imported base layer") {
		t.Errorf("import base: %q", out)
	}
	var res struct {
		Layer    string
		CIM      string
		Parents  []string
		Base     bool
		Entries  int
		StdFiles int `json:"std_files"`
	}
	out := c.ok("--json", "wclayer", "import", p("child.tar"), p("s/child"), "--parent", p("s/base"))
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Base || res.Entries == 0 || res.StdFiles != 5 ||
		res.CIM != p("s/cim-layers/child.cim") || len(res.Parents) != 1 {
		t.Fatalf("import --json: %+v %v\n%s", res, err, out)
	}
	if ls := c.ok("cim", "ls", res.CIM, "Hives"); !strings.Contains(ls, "Hives/SYSTEM_BASE") || !strings.Contains(ls, "Hives/System_Delta") {
		t.Errorf("cim ls Hives of the child: %q", ls)
	}

	// A fork's CIM must sit beside its parent's: refused, nothing left.
	_, stderr, code := c.run("wclayer", "import", p("child.tar"), p("s/other"), "--parent", p("s/base"), "--cim", p("elsewhere/x.cim"))
	if code == 0 || !strings.Contains(stderr, "share the parent's directory") {
		t.Errorf("fork elsewhere: code %d, %q", code, stderr)
	}
	for _, gone := range []string{"s/other", "elsewhere"} {
		if _, err := os.Stat(p(gone)); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", gone, err)
		}
	}

	// A truncated tar names the entry and leaves nothing.
	b, err := os.ReadFile(p("base.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("cut.tar"), b[:len(b)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = c.run("wclayer", "import", p("cut.tar"), p("s/cut"))
	if code == 0 || !strings.Contains(stderr, "truncated") || !strings.Contains(stderr, `"Files/`) {
		t.Errorf("truncated: code %d, %q", code, stderr)
	}
	if _, err := os.Stat(p("s/cut")); !os.IsNotExist(err) {
		t.Errorf("s/cut left behind (%v)", err)
	}
	if _, err := os.Stat(p("s/cim-layers/cut.cim")); !os.IsNotExist(err) {
		t.Errorf("cut.cim left behind (%v)", err)
	}

	// Export both layers and import them again: the same trees.
	c.ok("wclayer", "export", p("s/base"), p("base2.tar"))
	c.ok("--json", "wclayer", "export", p("s/child"), p("child2.tar"), "--parent", p("s/base"))
	c.ok("wclayer", "import", p("base2.tar"), p("t/base"))
	c.ok("wclayer", "import", p("child2.tar"), p("t/child"), "--parent", p("t/base"))
	a := c.ok("--json", "cim", "ls", "-r", p("s/cim-layers/child.cim"))
	bb := c.ok("--json", "cim", "ls", "-r", p("t/cim-layers/child.cim"))
	if a != bb || len(a) < 1000 {
		t.Errorf("re-imported child CIM lists differently (%d vs %d bytes)", len(a), len(bb))
	}
}
