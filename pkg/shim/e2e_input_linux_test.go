package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/shim"
	"github.com/layervisor/layervisor/pkg/uvm"
)

func containerd2(t testing.TB) containerdtest.Options {
	t.Helper()
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err != nil {
		testutil.Unavailable(t, "containerd 2.x not built (bash scripts/deps.sh): "+err.Error())
	}
	return containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2}
}

// run is `ctr run` with the layervisor runtime and snapshotter.
func (e *ctrEnv) run(ctx context.Context, args ...string) (string, error) {
	return e.d.Ctr(ctx, append([]string{"run", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor"}, args...)...)
}

// assertNothingRunning checks that no shim, QEMU or virtiofsd of the
// test's root is left (assertNoLeaks, at cleanup, checks mounts, loop
// devices and UVM state).
func (e *ctrEnv) assertNothingRunning(what string) {
	e.t.Helper()
	waitNoShim(e.t, e.root)
	if ps := uvm.Processes(e.root); len(ps) > 0 {
		e.fail("%s: QEMU/virtiofsd left: %v", what, ps)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "uvms")); len(ents) > 0 {
		e.fail("%s: UVM state left: %d entries", what, len(ents))
	}
}

// TestCtrBadInputContainerd2: what the guest cannot honour is refused
// through the task API with an error naming it, and nothing is left: no
// shim, QEMU, virtiofsd, mount, loop device or UVM state.
func TestCtrBadInputContainerd2(t *testing.T) { testCtrBadInput(t, containerd2(t)) }

// TestCtrBadInputContainerd16 is the same with Debian's containerd 1.6.
func TestCtrBadInputContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrBadInput(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

func testCtrBadInput(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	ctx := context.Background()
	hostDir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"device", []string{"--rm", "--device", "/dev/fuse", e.ref, "lv-dev", "true"}, `linux.devices: /dev/fuse \(c 10:229\).*guest has no such device.*invalid argument`},
		{"host network", []string{"--rm", "--net-host", e.ref, "lv-net", "true"}, `host network.*invalid argument`},
		{"mount type", []string{"--rm", "--mount", "type=nfs,src=server:/export,dst=/mnt,options=ro", e.ref, "lv-nfs", "true"}, `type "nfs" is not supported in a utility VM.*invalid argument`},
		{"bind source", []string{"--rm", "--mount", "type=bind,src=/no/such/dir,dst=/mnt,options=rbind", e.ref, "lv-nosrc", "true"}, `bind source: stat /no/such/dir: no such file.*invalid argument`},
		// A host directory as the root file system: no snapshot, no layers.
		{"rootfs", []string{"--rm", "--rootfs", hostDir, "lv-rootfs", "true"}, `layervisor snapshotter.*got 0 rootfs mounts.*invalid argument`},
	} {
		out, err := e.run(ctx, c.args...)
		if err == nil || !regexp.MustCompile(c.want).MatchString(out+err.Error()) {
			e.fail("%s: ctr run: want an error matching %q, got %v %s", c.name, c.want, err, out)
		}
		t.Logf("%s: %s", c.name, ctrError(out+err.Error()))
		e.assertNothingRunning(c.name)
		e.d.Ctr(ctx, "containers", "rm", c.args[len(c.args)-2]) // ctr run leaves it when the task fails
	}

	// An exec in a task that has exited: FailedPrecondition.
	const id = "lv-exited"
	if out, err := e.run(ctx, "-d", e.ref, id, "true"); err != nil {
		e.fail("ctr run -d: %v %s", err, out)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err := e.d.Ctr(ctx, "tasks", "ls")
		if err == nil && regexp.MustCompile(id+`\s+\d+\s+STOPPED`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			e.fail("task not stopped: %q, %v", out, err)
		}
	}
	out, err := e.d.Ctr(ctx, "task", "exec", "--exec-id", "late", id, "true")
	if err == nil || !regexp.MustCompile(`task `+id+` is STOPPED.*failed precondition`).MatchString(out+err.Error()) {
		e.fail("exec in a stopped task: want a failed precondition, got %v %s", err, out)
	}
	t.Logf("exec in a stopped task: %s", ctrError(out+err.Error()))
	for _, args := range [][]string{{"tasks", "rm", id}, {"containers", "rm", id}} {
		if out, err := e.d.Ctr(ctx, args...); err != nil {
			e.fail("%v: %v %s", args, err, out)
		}
	}
	e.assertNothingRunning("exec in a stopped task")
	logShimComplaints(t, e.d)
}

// ctrError is the first "ctr: …" line of ctr's output.
func ctrError(s string) string {
	if i := strings.Index(s, "ctr: "); i >= 0 {
		s = s[i:]
	}
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// TestCtrBindMountContainerd2: a spec bind mount reaches the container
// through virtiofs, read-only when the mount says so.
func TestCtrBindMountContainerd2(t *testing.T) { testCtrBindMount(t, containerd2(t)) }

// TestCtrBindMountContainerd16 is the same with Debian's containerd 1.6.
func TestCtrBindMountContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrBindMount(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

func testCtrBindMount(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	ctx := context.Background()
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "hello"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := e.run(ctx, "--rm", "--mount", "type=bind,src="+hostDir+",dst=/data,options=rbind:ro", e.ref, "lv-bind",
		"sh", "-c", "cat /data/hello; (echo x > /data/new) 2>&1 && echo written; grep ' /data ' /proc/mounts")
	t.Logf("ctr run with a read-only bind: %v\n%s", err, out)
	if err != nil || !strings.HasPrefix(out, "from the host\n") || strings.Contains(out, "written") ||
		!regexp.MustCompile(`(?i)read-only file system`).MatchString(out) || !regexp.MustCompile(`(?m)^\S+ /data virtiofs ro[ ,]`).MatchString(out) {
		e.fail("want the host's file, a read-only file system error and a virtiofs ro mount at /data, got %v %q", err, out)
	}
	if _, err := os.Stat(filepath.Join(hostDir, "new")); !os.IsNotExist(err) {
		t.Errorf("the container wrote to a read-only bind: %v", err)
	}

	// Read-write: the container's write reaches the host directory.
	out, err = e.run(ctx, "--rm", "--mount", "type=bind,src="+hostDir+",dst=/data,options=rbind:rw", e.ref, "lv-bind-rw",
		"sh", "-c", "echo from the guest > /data/new && echo written")
	if err != nil || out != "written\n" {
		e.fail("read-write bind: %v %q", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(hostDir, "new")); err != nil || string(b) != "from the guest\n" {
		t.Errorf("read-write bind: the host has %q, %v", b, err)
	}
	e.assertNothingRunning("bind mounts")
	logShimComplaints(t, e.d)
}

// TestCtrOverlayfsContainerd2: a plain overlay snapshot (containerd's
// overlayfs snapshotter) is mounted on the host, as runc's shim does, and
// shared into the guest read-write through virtiofs: the container runs on
// it in the guest, its writes land in the snapshot, binds still work, and
// nothing stays mounted.
func TestCtrOverlayfsContainerd2(t *testing.T) { testCtrOverlayfs(t, containerd2(t)) }

// TestCtrOverlayfsContainerd16 is the same with Debian's containerd 1.6.
func TestCtrOverlayfsContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrOverlayfs(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

func testCtrOverlayfs(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	ctx := context.Background()
	if out, err := e.d.Ctr(ctx, "images", "import", "--snapshotter", "overlayfs", demoImage(t)); err != nil {
		e.fail("import for overlayfs: %v %s", err, out)
	}
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "hello"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kv, err := os.ReadFile(filepath.Join(bootDir(), "kernel-version"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := e.d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "overlayfs",
		"--mount", "type=bind,src="+hostDir+",dst=/data,options=rbind:ro", e.ref, "lv-ovl",
		"sh", "-c", "cat /etc/demo-release; uname -r; echo new > /etc/new && cat /etc/new; cat /data/hello; grep ' / ' /proc/mounts")
	t.Logf("ctr run --snapshotter overlayfs (%v): %v\n%s", time.Since(start).Round(time.Millisecond), err, out)
	want := "layervisor demo 2\n" + strings.TrimSpace(string(kv)) + "\nnew\nfrom the host\n"
	if err != nil || !strings.HasPrefix(out, want) || !regexp.MustCompile(`(?m)^\S+ / virtiofs rw`).MatchString(out) {
		e.fail("want %q and a virtiofs root, got %v %q", want, err, out)
	}
	e.assertNothingRunning("overlayfs run")
	if ms, err := mountinfoUnder(e.d.Dir); err != nil || len(ms) > 0 {
		t.Errorf("mounts left under containerd's directory: %v, %v", ms, err)
	}
	logShimComplaints(t, e.d)
}
