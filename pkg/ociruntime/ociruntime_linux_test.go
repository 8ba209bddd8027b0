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
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/runspec"
)

// busyboxRoot is a root file system holding the host's static busybox.
func busyboxRoot(t *testing.T) string {
	t.Helper()
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
	return rootfs
}

// wrappedRuntime is the host's OCI runtime behind a script that logs each
// command line to the returned file and runs filter (sh) first, with the
// arguments in "$@".
func wrappedRuntime(t *testing.T, filter string) (wrapper, calls string) {
	t.Helper()
	testutil.NeedRoot(t)
	real, err := ociruntime.Find()
	if err != nil {
		testutil.Unavailable(t, "no OCI runtime (bash scripts/deps.sh): "+err.Error())
	}
	dir := t.TempDir()
	calls = filepath.Join(dir, "calls")
	wrapper = filepath.Join(dir, "runtime")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\n%s\nexec %s \"$@\"\n", calls, filter, real)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper, calls
}

func startSleep(t *testing.T, rt *ociruntime.Runtime, id string) (*ociruntime.Process, *bytes.Buffer) {
	t.Helper()
	spec, err := runspec.Build(runspec.Flags{ID: id, Args: []string{"/bin/busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	spec.Root.Path = busyboxRoot(t)
	var out bytes.Buffer
	p, err := rt.Start(context.Background(), ociruntime.Container{ID: id, Bundle: t.TempDir(), Spec: spec, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Delete(context.Background(), id) })
	return p, &out
}

// A container's init is signalled and named without asking the runtime:
// its `kill` and `state` commands fail here, and the init is still found
// and killed (each ask is a process start, ~0.5 s in a TCG guest).
func TestInitWithoutRuntimeCalls(t *testing.T) {
	wrapper, calls := wrappedRuntime(t, `for a in "$@"; do case $a in kill|state) echo refused >&2; exit 1;; esac; done`)
	rt := &ociruntime.Runtime{Binary: wrapper, StateDir: t.TempDir()}
	ctx := context.Background()
	p, out := startSleep(t, rt, "init-pid")
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
	if c := readFile(calls); strings.Contains(c, " kill ") || strings.Contains(c, " state ") {
		t.Errorf("the runtime was asked: %s", c)
	}
}

// A runtime that ignores --pid-file: Start still returns (its wait for the
// file is bounded), and signals go through the runtime.
func TestRuntimeWithoutPidFile(t *testing.T) {
	// Drops --pid-file and its value (go-runc passes them as two words).
	wrapper, _ := wrappedRuntime(t, `n=$#; i=0; skip=0; for a in "$@"; do i=$((i+1)); if [ $skip = 1 ]; then skip=0; elif [ "$a" = --pid-file ]; then skip=1; else set -- "$@" "$a"; fi; done; shift $n`)
	rt := &ociruntime.Runtime{Binary: wrapper, StateDir: t.TempDir()}
	start := time.Now()
	p, out := startSleep(t, rt, "no-pid-file")
	if p.InitPid() != 0 {
		t.Errorf("InitPid %d with no pid file written", p.InitPid())
	}
	t.Logf("started in %v", time.Since(start))
	if err := p.Signal(context.Background(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(); err != nil || code != 137 {
		t.Fatalf("exit %d, %v; want 137 (output %q)", code, err, out.String())
	}
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}
