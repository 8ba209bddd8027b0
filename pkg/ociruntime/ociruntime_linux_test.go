package ociruntime_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/runspec"
)

// A container's init is signalled and named without asking the runtime:
// its `kill` and `state` commands fail here, and the init is still found
// and killed (each ask is a process start, ~0.5 s in a TCG guest).
func TestInitWithoutRuntimeCalls(t *testing.T) {
	testutil.NeedRoot(t)
	real, err := ociruntime.Find()
	if err != nil {
		testutil.Unavailable(t, "no OCI runtime (bash scripts/deps.sh): "+err.Error())
	}
	busybox := testutil.NeedTool(t, "busybox")
	rootfs := t.TempDir()
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	// A runtime that refuses kill and state, and logs every command.
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	wrapper := filepath.Join(dir, "runtime")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nfor a in \"$@\"; do case $a in kill|state) echo refused >&2; exit 1;; esac; done\nexec %s \"$@\"\n", calls, real)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	spec, err := runspec.Build(runspec.Flags{ID: "init-pid", Args: []string{"/bin/busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	spec.Root.Path = rootfs
	rt := &ociruntime.Runtime{Binary: wrapper, StateDir: t.TempDir()}
	var out bytes.Buffer
	ctx := context.Background()
	p, err := rt.Start(ctx, ociruntime.Container{ID: "init-pid", Bundle: t.TempDir(), Spec: spec, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.InitPid()
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "sleep") {
		t.Errorf("InitPid %d: cmdline %q, %v; want the container's sleep", pid, cmdline, err)
	}
	// SIGKILL: an init of a PID namespace ignores what it has no handler for.
	if err := p.Signal(ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("signal: %v (runtime's commands: %s)", err, readFile(calls))
	}
	code, err := p.Wait()
	if err != nil || code != 137 {
		t.Fatalf("exit %d, %v; want 137 (output %q)", code, err, out.String())
	}
	// After the exit, a signal is a no-op, not an error.
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Errorf("signal after exit: %v", err)
	}
	rt.Delete(ctx, "init-pid")
	if c := readFile(calls); strings.Contains(c, " kill ") || strings.Contains(c, " state ") {
		t.Errorf("the runtime was asked: %s", c)
	}
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}
