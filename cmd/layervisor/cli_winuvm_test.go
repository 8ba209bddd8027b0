package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

// A Windows image with a utility VM imports into CIM layers whose base
// holds the SystemTemplate pair and CIM-boot BCD and SYSTEM (the same
// bytes in the folder and in the CIM), and `uvm create --windows-image`
// provisions a sandbox that derives from it. Validated with qemu-img and
// libvhdi; booting is refused clearly.
func TestCLIWindowsUtilityVM(t *testing.T) {
	c := newCLI(t)
	img := filepath.Join(t.TempDir(), "win.tar")
	c.ok("dev", "build-image", "--kind", "windows", "--name", "win:1", "--format", "oci-tar", img)
	c.ok("image", "import", img)

	var images []struct {
		Name     string   `json:"name"`
		Platform string   `json:"platform"`
		ChainIDs []string `json:"chainIDs"`
	}
	if err := json.Unmarshal([]byte(c.ok("image", "ls", "--json")), &images); err != nil || len(images) != 1 || images[0].Platform != "windows/amd64" {
		t.Fatalf("image ls: %+v %v", images, err)
	}
	base := strings.TrimPrefix(images[0].ChainIDs[0], "sha256:")
	layer := filepath.Join(c.root, "wclayers", base)
	var li struct {
		UtilityVM *struct{ Build int } `json:"utilityVM"`
	}
	b, _ := os.ReadFile(filepath.Join(layer, "layer.json"))
	if json.Unmarshal(b, &li); li.UtilityVM == nil || li.UtilityVM.Build != 26100 {
		t.Fatalf("base layer.json does not record a prepared utility VM: %s", b)
	}
	baseVHDX := filepath.Join(layer, filepath.FromSlash(uvmlayer.BaseVHDX))
	tplVHDX := filepath.Join(layer, filepath.FromSlash(uvmlayer.TemplateVHDX))
	info := testutil.Run(t, "qemu-img", "info", "--output=json", baseVHDX)
	if !strings.Contains(string(info), `"format": "vhdx"`) || !strings.Contains(string(info), `"virtual-size": 10737418240`) {
		t.Errorf("qemu-img info of the base: %s", info)
	}
	// The edited BCD and SYSTEM are the ones in the CIM too.
	cim := filepath.Join(c.root, "wclayers", "cim-layers", base+".cim")
	for _, f := range []string{uvmlayer.BCDPath, uvmlayer.SystemHive} {
		onDisk, err := os.ReadFile(filepath.Join(layer, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		if inCIM := c.ok("cim", "cat", cim, f); inCIM != string(onDisk) {
			t.Errorf("%s differs between the layer folder and the CIM", f)
		}
	}

	c.ok("uvm", "create", "win1", "--windows-image", "win:1")
	sandbox := filepath.Join(c.root, "uvms", "win1", "sandbox.vhdx")
	vi := testutil.Run(t, "vhdiinfo", sandbox)
	if !strings.Contains(string(vi), "Differential") && !strings.Contains(string(vi), "Differencing") {
		t.Errorf("vhdiinfo of the sandbox:\n%s", vi)
	}
	var di struct {
		Type string `json:"type"`
		Size int64  `json:"virtualSize"`
	}
	json.Unmarshal([]byte(c.ok("disk", "info", "--json", sandbox)), &di)
	if di.Type != "differencing" || di.Size != 10<<30 {
		t.Errorf("disk info of the sandbox: %+v", di)
	}
	// The chain reads through to the base (qemu-img cannot open
	// differencing VHDX; our reader follows the parent locators).
	if st, _ := os.Stat(sandbox); st.Size() > 8<<20 {
		t.Errorf("sandbox is %d bytes: a copy, not a child", st.Size())
	}
	c.fail("already exists", "uvm", "create", "win1", "--windows-image", "win:1")
	c.fail("Hyper-V", "uvm", "start", "win1")
	c.fail("nope", "uvm", "create", "lin", "--windows-image", "nope")
	if out := c.ok("uvm", "ls", "--json"); !strings.Contains(out, `"win1"`) || !strings.Contains(out, `"created"`) {
		t.Errorf("uvm ls: %s", out)
	}
	c.ok("uvm", "rm", "win1")
	if _, err := os.Stat(filepath.Dir(sandbox)); !os.IsNotExist(err) {
		t.Errorf("uvm rm left %s", filepath.Dir(sandbox))
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		testutil.Run(t, "qemu-img", "check", baseVHDX)
	}
	if _, err := os.Stat(tplVHDX); err != nil {
		t.Errorf("template gone after uvm rm: %v", err)
	}
}
