package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// Random-moment crash tests: the CLI is killed with SIGKILL at a random
// moment of an import, a mount, or a run in either isolation mode. Only the
// CLI is killed, as in a real crash: what it spawned (QEMU, virtiofsd, the
// container's processes) must die with it or be reaped by the next gc.
// After the kill and one gc nothing of the operation may remain (process,
// mount, loop device, temp file, UVM, run container) and the store must
// still work. LAYERVISOR_CRASH_SEED=<n> replays a seed; the moments also
// depend on the machine's timing.

const crashKills = 4

func crashRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LAYERVISOR_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("LAYERVISOR_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (LAYERVISOR_CRASH_SEED=%d replays it)", seed, seed)
	return rand.New(rand.NewPCG(seed, 0))
}

// start starts layervisor with args in the background.
func (c *cli) start(args ...string) *exec.Cmd {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--root", c.root}, args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Stdout, cmd.Stderr = new(bytes.Buffer), new(bytes.Buffer)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	return cmd
}

// timed runs a command that must succeed and returns how long it took.
func (c *cli) timed(args ...string) time.Duration {
	c.t.Helper()
	t0 := time.Now()
	c.ok(args...)
	return time.Since(t0)
}

// killAt runs args and kills the CLI (only it) after d; it reports whether
// the kill came before the command finished, and else how long it took.
func (c *cli) killAt(d time.Duration, args ...string) (killed bool, took time.Duration) {
	c.t.Helper()
	t0 := time.Now()
	cmd := c.start(args...)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Fatalf("layervisor %s failed before the kill: %v\n%s", strings.Join(args, " "), err, cmd.Stderr)
		}
		return false, time.Since(t0)
	case <-time.After(d):
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := <-done
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err != nil && !ws.Signaled() {
		c.t.Fatalf("layervisor %s failed before the kill: %v\n%s", strings.Join(args, " "), err, cmd.Stderr)
	}
	return ws.Signaled(), time.Since(t0) // took counts when it finished just before the kill
}

// leftovers lists what of the root's state is left on the host: UVM
// processes, processes whose command line names marker, mounts and loop
// devices under the root, temp files, UVM state, run claims and containers
// (except keep).
func (c *cli) leftovers(marker string, keep ...string) []string {
	var left []string
	for _, p := range uvm.Processes(c.root) {
		left = append(left, fmt.Sprintf("%s process %d of UVM %s", p.Kind, p.PID, p.UVM))
	}
	if marker != "" {
		cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range cmdlines {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(marker)) {
				left = append(left, fmt.Sprintf("container process %s: %q", p, b))
			}
		}
	}
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, c.root+"/") {
			left = append(left, "mount "+m.Mountpoint)
		}
	}
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.Backing, c.root+"/") {
			left = append(left, "loop device "+d.Path+" -> "+d.Backing)
		}
	}
	filepath.Walk(c.root, func(p string, info os.FileInfo, err error) error {
		if err == nil && (strings.HasPrefix(info.Name(), ".tmp-") || strings.HasPrefix(info.Name(), "import-")) {
			left = append(left, "temp "+p)
		}
		return nil
	})
	for _, dir := range []string{"tmp", "uvms", "runs"} {
		ents, _ := os.ReadDir(filepath.Join(c.root, dir))
		for _, e := range ents {
			left = append(left, dir+"/"+e.Name())
		}
	}
	var cs []struct{ Name string }
	out, _, _ := c.run("container", "ls", "--json")
	json.Unmarshal([]byte(out), &cs)
	for _, ct := range cs {
		if !contains(keep, ct.Name) {
			left = append(left, "container "+ct.Name)
		}
	}
	return left
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// crashLoop measures one clean run of op, then kills op crashKills times at
// random moments within its run time (the latest one seen: it varies with
// the machine's load), each followed by gc and check; then one more clean
// run proves the store still works.
func crashLoop(t *testing.T, c *cli, rng *rand.Rand, op []string, prepare func(), check func(i int, d time.Duration)) {
	prepare()
	full := c.timed(op...)
	t.Logf("clean %s: %s", strings.Join(op, " "), full.Round(time.Millisecond))
	for i := 0; i < crashKills; i++ {
		prepare()
		d := time.Duration(rng.Int64N(int64(full) + 1))
		what := "killed"
		if killed, took := c.killAt(d, op...); !killed {
			what = "the command had finished after " + took.Round(time.Millisecond).String()
			full = took
		}
		t.Logf("kill %d at %s (%s); gc: %s", i, d.Round(time.Millisecond), what, strings.TrimSpace(c.ok("gc")))
		check(i, d)
	}
	prepare()
	c.ok(op...)
}

func TestCLIRandomKill(t *testing.T) {
	rng := crashRand(t)
	img := demoImage(t, "oci-tar")

	t.Run("import", func(t *testing.T) {
		c := newCLI(t)
		op := []string{"image", "import", "--name", "demo", img}
		crashLoop(t, c, rng, op, func() {
			c.run("image", "rm", "demo")
			c.ok("gc")
		}, func(i int, d time.Duration) {
			if left := c.leftovers(""); len(left) > 0 {
				t.Fatalf("kill %d at %s: left after gc: %v", i, d, left)
			}
			// Whatever the kill left, the layers that remain are whole:
			// importing again and mounting gives the demo tree.
			c.ok(op...)
			c.ok("container", "create", "check", "--image", "demo", "--scratch-size", "64M")
			checkDemoTree(t, strings.TrimSpace(c.ok("container", "mount", "check")))
			c.ok("container", "rm", "check")
		})
		c.ok("image", "rm", "demo")
	})

	t.Run("mount", func(t *testing.T) {
		c := newCLI(t)
		c.ok("image", "import", "--name", "demo", img)
		c.ok("container", "create", "victim", "--image", "demo", "--scratch-size", "64M")
		op := []string{"container", "mount", "victim"}
		crashLoop(t, c, rng, op, func() { c.run("container", "unmount", "victim") }, func(i int, d time.Duration) {
			// gc rolls an incomplete mount back and keeps a complete one.
			var cs []struct {
				Mounted bool
				Rootfs  string
			}
			json.Unmarshal([]byte(c.ok("container", "ls", "--json")), &cs)
			if len(cs) != 1 {
				t.Fatalf("kill %d at %s: containers after gc: %+v", i, d, cs)
			}
			if cs[0].Mounted {
				checkDemoTree(t, cs[0].Rootfs)
				c.ok("container", "unmount", "victim")
			}
			if left := c.leftovers("", "victim"); len(left) > 0 {
				t.Fatalf("kill %d at %s: left after gc (and unmount): %v", i, d, left)
			}
		})
		c.ok("container", "unmount", "victim")
		c.ok("container", "rm", "victim")
	})

	t.Run("run-process", func(t *testing.T) {
		c := newCLI(t)
		c.ok("image", "import", "--name", "demo", img)
		marker := fmt.Sprintf("lv-crash-%d", rng.Uint64())
		op := []string{"run", "demo", "--", "sh", "-c", "cat /etc/demo-release >/dev/null; sleep 0.3; : " + marker}
		crashLoop(t, c, rng, op, func() {}, func(i int, d time.Duration) {
			if left := c.leftovers(marker); len(left) > 0 {
				t.Fatalf("kill %d at %s: left after gc: %v", i, d, left)
			}
		})
	})

	t.Run("run-vm", func(t *testing.T) {
		c := vmCLI(t)
		c.ok("image", "import", "--name", "demo", img)
		// A bind mount, so a virtiofsd serves the VM too.
		data := t.TempDir()
		os.WriteFile(filepath.Join(data, "x"), []byte("shared"), 0o644)
		op := []string{"run", "--isolation", "vm", "-v", data + ":/data:ro", "demo", "--", "cat", "/data/x"}
		crashLoop(t, c, rng, op, func() {}, func(i int, d time.Duration) {
			if left := c.leftovers(""); len(left) > 0 {
				t.Fatalf("kill %d at %s: left after gc: %v", i, d, left)
			}
		})
		if out := c.ok(op...); out != "shared" {
			t.Fatalf("run after the crashes: %q", out)
		}
	})
}

// A run killed right after forking QEMU, before QEMU's PID is recorded:
// QEMU dies with the run (no gc needed for that), and gc leaves nothing.
func TestCLIRunVMKilledAfterQEMUStarted(t *testing.T) {
	c := vmCLI(t)
	c.ok("image", "import", "--name", "demo", demoImage(t, "oci-tar"))
	c.env = []string{"LAYERVISOR_CRASH_AT=uvm.qemu-started"}
	if _, errs, code := c.run("run", "--isolation", "vm", "demo", "--", "true"); code != -1 {
		t.Fatalf("crash point not reached (exit %d): %s", code, errs)
	}
	c.env = nil
	deadline := time.Now().Add(30 * time.Second)
	for len(uvm.QEMUProcesses(c.root)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %v outlived the killed run by 30 s", uvm.QEMUProcesses(c.root))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var gc struct {
		Uvms     struct{ Reaped []string }
		DeadRuns []string
	}
	json.Unmarshal([]byte(c.ok("gc", "--json")), &gc)
	if len(gc.Uvms.Reaped) != 1 || len(gc.DeadRuns) != 1 || gc.Uvms.Reaped[0] != gc.DeadRuns[0] {
		t.Fatalf("gc did not reap the run's UVM and container: %+v", gc)
	}
	if left := c.leftovers(""); len(left) > 0 {
		t.Fatalf("left after gc: %v", left)
	}
}
