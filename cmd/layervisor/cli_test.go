package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/uvm"

	"github.com/layervisor/layervisor/internal/testutil"
)

// These tests drive the real binary as a user would, as root, with real
// loop devices and overlayfs.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
}

func layervisorBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := testutil.SharedDir("layervisor-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "layervisor")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("build layervisor: %v", binErr)
	}
	return binPath
}

type cli struct {
	t    *testing.T
	bin  string
	root string
	env  []string
	// cgroups are the run cgroups that existed before the test: only new
	// ones are its leaks (cgroups are machine-wide).
	cgroups map[string]bool
}

func runCgroupDirs() []string {
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/layervisor/run-*")
	return cgs
}

func newCLI(t *testing.T) *cli {
	needRoot(t)
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root"), cgroups: map[string]bool{}}
	for _, cg := range runCgroupDirs() {
		c.cgroups[cg] = true
	}
	t.Cleanup(func() { c.assertNoLeaks() })
	return c
}

// run runs layervisor with args and returns stdout, stderr and the exit code
// (-1 when killed by a signal).
func (c *cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--root", c.root}, args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = -1
		}
	} else if err != nil {
		c.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed and returns its stdout.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errs, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("layervisor %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// fail runs a command that must fail with stderr naming want.
func (c *cli) fail(want string, args ...string) {
	c.t.Helper()
	out, errs, code := c.run(args...)
	if code == 0 {
		c.t.Fatalf("layervisor %s succeeded, want failure\nstdout: %s", strings.Join(args, " "), out)
	}
	if !strings.Contains(errs, want) {
		c.t.Fatalf("layervisor %s: stderr %q does not mention %q", strings.Join(args, " "), errs, want)
	}
}

// assertNoLeaks checks that nothing under the root is mounted or attached
// and that no temp file is left once every container is gone.
func (c *cli) assertNoLeaks() {
	t := c.t
	t.Helper()
	// QEMU runs in its own session and would outlive the test binary, so
	// every VM goes, even one a failed test left behind. One that no UVM
	// records is a leak.
	if pids := uvm.QEMUProcesses(c.root); len(pids) > 0 {
		if out, _, _ := c.run("uvm", "ls", "--json"); strings.TrimSpace(out) == "[]" {
			t.Errorf("leaked QEMU processes %v", pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	out, _, _ := c.run("container", "ls", "--json")
	var cs []map[string]any
	json.Unmarshal([]byte(out), &cs)
	if len(cs) > 0 {
		return // the test kept containers on purpose; it checks itself
	}
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, c.root) {
			t.Errorf("leaked mount %s", m.Mountpoint)
			syscall.Unmount(m.Mountpoint, syscall.MNT_DETACH)
		}
	}
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.Backing, c.root) {
			t.Errorf("leaked loop device %s -> %s", d.Path, d.Backing)
			loop.Detach(d.Path)
		}
	}
	filepath.Walk(c.root, func(p string, info os.FileInfo, err error) error {
		if err == nil && (strings.HasPrefix(info.Name(), ".tmp-") || strings.HasPrefix(info.Name(), "import-")) {
			t.Errorf("leaked temp %s", p)
		}
		return nil
	})
	if ents, _ := os.ReadDir(filepath.Join(c.root, "tmp")); len(ents) > 0 {
		t.Errorf("leaked entries in tmp/: %v", ents)
	}
	// A run's OCI runtime state, bundle and cgroups go with it.
	if ents, _ := os.ReadDir(filepath.Join(c.root, "runtime")); len(ents) > 0 {
		t.Errorf("leaked runtime state: %v", ents)
	}
	if bs, _ := filepath.Glob(filepath.Join(c.root, "runs", "*.bundle")); len(bs) > 0 {
		t.Errorf("leaked bundles: %v", bs)
	}
	var leaked []string
	for _, cg := range runCgroupDirs() {
		if !c.cgroups[cg] {
			leaked = append(leaked, cg)
		}
	}
	if len(leaked) > 0 {
		t.Errorf("leaked cgroups: %v", leaked)
	}
}
