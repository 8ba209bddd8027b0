package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
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
		StdFiles int `json:"stdFiles"`
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

// wclayer import of a base layer with a utility VM prepares it for CIM
// boot as image import does (hcsshim's CIM layer writer does it when it
// writes the base layer): the two disks, validated by qemu-img, libvhdi,
// sgdisk and ntfs-3g, and the BCD and SYSTEM edits, in the folder and in
// the CIM. A build of 20348 needs --force-uvm, as with image import.
func TestWclayerImportUtilityVM(t *testing.T) {
	for _, tool := range []string{"mkntfs", "qemu-img", "vhdiinfo", "sgdisk", "ntfsinfo", "hivexsh", "losetup"} {
		testutil.NeedTool(t, tool)
	}
	testutil.NeedRoot(t) // the NTFS partition is read through a loop device
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root")}
	dir := t.TempDir()
	p := func(s string) string { return filepath.Join(dir, s) }
	var b bytes.Buffer
	if _, err := synth.Base(&b, synth.Options{Seed: 5, Files: 60, Bytes: 1 << 20, UtilityVM: true, Build: 26100}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("base.tar"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	var res struct {
		CIM       string
		UtilityVM *struct {
			Build       int      `json:"build"`
			DiskID      string   `json:"diskID"`
			PartitionID string   `json:"partitionID"`
			Files       []string `json:"files"`
		} `json:"utilityVM"`
	}
	out := c.ok("--json", "wclayer", "import", p("base.tar"), p("s/base"))
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.UtilityVM == nil || res.UtilityVM.Build != 26100 {
		t.Fatalf("import --json: %+v %v\n%s", res, err, out)
	}
	layer := p("s/base")
	base := filepath.Join(layer, filepath.FromSlash(uvmlayer.BaseVHDX))
	tmpl := filepath.Join(layer, filepath.FromSlash(uvmlayer.TemplateVHDX))
	if !slices.Equal(res.UtilityVM.Files, []string{uvmlayer.BaseVHDX, uvmlayer.BCDPath, uvmlayer.SystemHive, uvmlayer.TemplateVHDX}) {
		t.Errorf("files %v", res.UtilityVM.Files)
	}

	// The base disk: a 10 GiB dynamic VHDX with 1 MiB blocks, consistent.
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
		ClusterSize int64  `json:"cluster-size"`
	}
	if err := json.Unmarshal(testutil.Run(t, "qemu-img", "info", "--output=json", base), &info); err != nil ||
		info.Format != "vhdx" || info.VirtualSize != 10<<30 || info.ClusterSize != 1<<20 {
		t.Errorf("qemu-img info %s: %+v %v", base, info, err)
	}
	testutil.Run(t, "qemu-img", "check", "-f", "vhdx", base)
	// The template: libvhdi reads it as a child of the base, by its path.
	vi := string(testutil.Run(t, "vhdiinfo", tmpl))
	if !strings.Contains(vi, "Differential") || !strings.Contains(vi, base) {
		t.Errorf("vhdiinfo %s:\n%s", tmpl, vi)
	}
	// The GPT sgdisk verifies carries the ids import reported.
	raw := filepath.Join(t.TempDir(), "base.raw")
	testutil.Run(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", base, raw)
	if out := string(testutil.Run(t, "sgdisk", "-v", raw)); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	if out := string(testutil.Run(t, "sgdisk", "-p", raw)); !strings.Contains(out, "Disk identifier (GUID): "+strings.ToUpper(res.UtilityVM.DiskID)) {
		t.Errorf("sgdisk -p:\n%s", out)
	}
	if out := string(testutil.Run(t, "sgdisk", "-i", "2", raw)); !strings.Contains(out, "Partition unique GUID: "+strings.ToUpper(res.UtilityVM.PartitionID)) {
		t.Errorf("sgdisk -i 2:\n%s", out)
	}
	// The data partition is the NTFS volume uvmlayer formats.
	dev := strings.TrimSpace(string(testutil.Run(t, "losetup", "--find", "--show", "--read-only",
		"--offset", "17825792", "--sizelimit", "10718543872", raw)))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if out := string(testutil.Run(t, "ntfsinfo", "-m", dev)); !strings.Contains(out, "Volume Name: "+uvmlayer.VolumeLabel) {
		t.Errorf("ntfsinfo:\n%s", out)
	}
	// CIM boot in the SYSTEM hive; the edited hives are the CIM's too.
	script := p("hivex")
	os.WriteFile(script, []byte("cd \\ControlSet001\\Control\nlsval BootContainerGuid\n"), 0o644)
	if out := strings.TrimSpace(string(testutil.Run(t, "hivexsh", "-f", script, filepath.Join(layer, filepath.FromSlash(uvmlayer.SystemHive))))); out != "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}" {
		t.Errorf("SYSTEM BootContainerGuid: %s", out)
	}
	for _, f := range uvmlayer.EditedFiles {
		onDisk, err := os.ReadFile(filepath.Join(layer, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		if inCIM := c.ok("cim", "cat", res.CIM, f); inCIM != string(onDisk) {
			t.Errorf("%s differs between the layer folder and the CIM", f)
		}
	}

	// 20348: left alone without --force-uvm, prepared with it.
	c.ok("dev", "build-wclayer", "--uvm", "--files", "40", "--size-mb", "1", p("old.tar"))
	if out := c.ok("wclayer", "import", p("old.tar"), p("s/old")); strings.Contains(out, "utility VM") {
		t.Errorf("20348 prepared without --force-uvm: %s", out)
	}
	if _, err := os.Stat(filepath.Join(p("s/old"), filepath.FromSlash(uvmlayer.BaseVHDX))); !os.IsNotExist(err) {
		t.Errorf("20348 without --force-uvm: %v", err)
	}
	if out := c.ok("wclayer", "import", "--force-uvm", p("old.tar"), p("s/forced")); !strings.Contains(out, "utility VM (build 20348) prepared") {
		t.Errorf("--force-uvm: %s", out)
	}
	testutil.Run(t, "qemu-img", "check", "-f", "vhdx", filepath.Join(p("s/forced"), filepath.FromSlash(uvmlayer.BaseVHDX)))
}
