package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// The CLI's VM path needs the guest agent next to the binary.
func vmCLI(t *testing.T) *cli {
	t.Helper()
	testutil.NeedTool(t, "qemu-system-x86_64")
	c := newCLI(t)
	agentBin := filepath.Join(filepath.Dir(c.bin), uvm.AgentName)
	if _, err := os.Stat(agentBin); err != nil {
		if err := testutil.BuildGuestAgent(agentBin); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func TestCLIRunVM(t *testing.T) {
	c := vmCLI(t)
	img := demoImage(t, "oci-tar")
	script := "cat /etc/demo-release; test -e /etc/motd || echo motd-deleted; ls /app; exit 3"
	out, errs, code := c.run("run", "--isolation", "vm", img, "--", "sh", "-c", script)
	if code != 3 {
		t.Fatalf("exit %d, want 3; stderr %s", code, errs)
	}
	hostOut, _, hostCode := c.run("run", "--isolation", "process", "demo:latest", "--", "sh", "-c", script)
	if hostCode != 3 || hostOut != out || out != "layervisor demo 2\nmotd-deleted\nblob.bin\nconfig\n" {
		t.Fatalf("vm output %q, host output %q (exit %d)", out, hostOut, hostCode)
	}
	// Layers as persistent memory (the default is SCSI): the same view.
	if pm, errs, code := c.run("run", "--isolation", "vm", "--layer-device", "vpmem", "demo:latest", "--", "sh", "-c", script); code != 3 || pm != out {
		t.Fatalf("--layer-device vpmem: exit %d, output %q, stderr %s", code, pm, errs)
	}
	if _, errs, code := c.run("run", "--isolation", "vm", "--layer-device", "floppy", "demo:latest", "--", "true"); code == 0 || !strings.Contains(errs, `"floppy"`) {
		t.Fatalf("bad --layer-device: exit %d, stderr %q", code, errs)
	}
	_, errs, code = c.run("run", "--isolation", "vm", "demo:latest", "--", "no-such-cmd")
	if code != 127 || !strings.Contains(errs, "no-such-cmd") {
		t.Fatalf("missing command in VM: exit %d, stderr %q", code, errs)
	}
	// Torn down: no container, no UVM, no QEMU.
	if out := c.ok("container", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("containers left: %s", out)
	}
	if out := c.ok("uvm", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("UVMs left: %s", out)
	}
	assertNoQEMU(t, c.root)
}

func TestCLIUVMLifecycle(t *testing.T) {
	c := vmCLI(t)
	c.fail("invalid UVM id", "uvm", "create", "../x")
	c.ok("uvm", "create", "v1", "--memory", "384M")
	c.fail("already exists", "uvm", "create", "v1") // in any state
	c.ok("uvm", "start", "v1")
	var sts []struct {
		Status string
		PID    int
		Accel  string
	}
	json.Unmarshal([]byte(c.ok("uvm", "ls", "--json")), &sts)
	if len(sts) != 1 || sts[0].Status != "running" || sts[0].PID == 0 {
		t.Fatalf("uvm ls: %+v", sts)
	}
	c.fail("running", "uvm", "create", "v1")
	// exec from another process: exit code and output come back.
	_, errs, code := c.run("uvm", "exec", "v1", "--", "/init")
	if code != 2 || !strings.Contains(errs, "PID 1") {
		t.Fatalf("uvm exec: exit %d stderr %q", code, errs)
	}
	if _, _, code := c.run("uvm", "exec", "v1", "--", "nope"); code != 127 {
		t.Fatalf("uvm exec of a missing command: exit %d", code)
	}
	// QEMU killed behind our back: gc reaps the UVM.
	if err := syscall.Kill(sts[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, sts[0].PID)
	json.Unmarshal([]byte(c.ok("uvm", "ls", "--json")), &sts)
	if len(sts) != 1 || sts[0].Status != "failed" {
		t.Fatalf("after kill: %+v", sts)
	}
	var gc struct{ Uvms struct{ Reaped []string } }
	json.Unmarshal([]byte(c.ok("gc", "--json")), &gc)
	if len(gc.Uvms.Reaped) != 1 {
		t.Fatalf("gc did not reap the dead UVM: %+v", gc)
	}
	if out := c.ok("uvm", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("UVMs left: %s", out)
	}
	// A clean start/rm cycle leaves nothing.
	c.ok("uvm", "create", "v2")
	c.ok("uvm", "start", "v2")
	c.ok("uvm", "rm", "v2")
	if _, err := os.Stat(filepath.Join(c.root, "uvms", "v2")); !os.IsNotExist(err) {
		t.Fatal("uvm rm left the state dir")
	}
	assertNoQEMU(t, c.root)
}

// A VHDX scratch in the VM path: QEMU attaches our VHDX, the guest writes
// through the container's overlay into it, and afterwards our reader (via a
// conversion to raw) sees QEMU's writes as a clean ext4 holding the file.
func TestCLIRunVMWithVHDXScratch(t *testing.T) {
	c := vmCLI(t)
	img := demoImage(t, "oci-tar")
	out := c.ok("run", "--isolation", "vm", "--scratch-format", "vhdx", "--scratch-size", "256M", "--keep", img,
		"--", "sh", "-c", "echo written-in-vm > /hello && cat /hello")
	if out != "written-in-vm\n" {
		t.Fatalf("output %q", out)
	}
	var cs []struct{ Name, ScratchFormat string }
	json.Unmarshal([]byte(c.ok("container", "ls", "--json")), &cs)
	if len(cs) != 1 || cs[0].ScratchFormat != "vhdx" {
		t.Fatalf("containers: %+v", cs)
	}
	sandbox := filepath.Join(c.root, "containers", cs[0].Name, "sandbox.vhdx")
	mustRun(t, testutil.NeedTool(t, "qemu-img"), "check", "-f", "vhdx", sandbox)
	if out := c.ok("disk", "check", sandbox); !strings.Contains(out, "no problems") {
		t.Fatalf("disk check: %s", out)
	}
	raw := filepath.Join(t.TempDir(), "scratch.img")
	c.ok("disk", "convert", sandbox, raw)
	e2fsck(t, raw)
	ls, err := exec.Command("debugfs", "-R", "ls -p /scratch", raw).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	found := false
	for _, line := range strings.Split(string(ls), "\n") {
		f := strings.Split(line, "/")
		if len(f) < 6 || f[5] == "." || f[5] == ".." || f[5] == "" {
			continue
		}
		got, _ := exec.Command("debugfs", "-R", "cat /scratch/"+f[5]+"/upper/hello", raw).Output()
		found = found || string(got) == "written-in-vm\n"
	}
	if !found {
		t.Fatalf("the file written in the VM is not in the scratch's upper dir; /scratch holds:\n%s", ls)
	}
	c.ok("container", "rm", cs[0].Name)
	assertNoQEMU(t, c.root)
}
