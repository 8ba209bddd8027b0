package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/ociimage"
)

// TestServeContainerd16 runs Debian's containerd 1.6 + runc on the
// snapshotter: import and unpack a multi-layer image with whiteouts, run a
// container that prints what the image holds, share layers with `image
// import`, survive gc and a SIGKILLed daemon, then leave nothing behind.
func TestServeContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testutil.NeedTool(t, "runc")
	testServe(t, containerdtest.Options{Config: containerdtest.ProxyConfig16}, false)
}

// TestServeContainerd2 does the same with containerd 2.x (built by
// scripts/deps.sh), whose proxy differ converts layers at unpack time.
func TestServeContainerd2(t *testing.T) {
	testutil.NeedTool(t, "runc")
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err != nil {
		testutil.Unavailable(t, "containerd 2.x not built (scripts/deps.sh): "+err.Error())
	}
	testServe(t, containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2}, true)
}

type daemon struct {
	proc *os.Process
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
	log  string
}

// startServe starts `layervisor serve` and waits for its socket.
func startServe(t *testing.T, c *cli, sock, content string) *daemon {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(t.TempDir(), "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(c.bin, "--root", c.root, "--log-level", "debug", "serve", "--socket", sock, "--containerd-content", content)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{proc: cmd.Process, done: make(chan struct{}), log: logf.Name()}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	// A clean stop unmounts the layers, so a failed test leaks nothing.
	t.Cleanup(func() { d.stop(syscall.SIGTERM) })
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("layervisor serve exited: %v\n%s", d.err, d.logText())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends sig and waits for the daemon to exit.
func (d *daemon) stop(sig os.Signal) error {
	d.proc.Signal(sig)
	<-d.done
	return d.err
}

func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// layerMounts lists the host's shared layer mounts under root (the
// snapshotter's, as no container of the store is mounted here).
func layerMounts(t *testing.T, root string) []string {
	t.Helper()
	ms, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	prefix := filepath.Join(root, "mounts", "shared") + "/"
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, prefix) {
			out = append(out, m.Mountpoint)
		}
	}
	sort.Strings(out)
	return out
}

// demoScript prints, for every path of imagebuild.DemoExpected, what the
// container sees; demoWant is what it must print.
func demoScript() (script, want string) {
	var paths []string
	for p := range imagebuild.DemoExpected {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var w strings.Builder
	for _, p := range paths {
		v := imagebuild.DemoExpected[p]
		switch {
		case v == "":
			fmt.Fprintf(&w, "%s absent\n", p)
		case strings.HasPrefix(v, "->"):
			fmt.Fprintf(&w, "%s -> %s\n", p, v[2:])
		default:
			fmt.Fprintf(&w, "%s = %s\n", p, strings.TrimRight(v, "\n"))
		}
	}
	w.WriteString("tmp writable\n")
	script = `for p in ` + strings.Join(paths, " ") + `; do
  if [ -L /$p ]; then echo "$p -> $(readlink /$p)"; elif [ -e /$p ]; then echo "$p = $(cat /$p)"; else echo "$p absent"; fi
done
echo writable > /tmp/w && echo "tmp $(cat /tmp/w)"`
	return script, w.String()
}

func testServe(t *testing.T, opts containerdtest.Options, viaDiffer bool) {
	c := newCLI(t)
	ctx := context.Background()
	// Short paths: unix socket names are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "lv-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.sock")
	opts.Config = fmt.Sprintf(opts.Config, sock)
	ctrdDir := t.TempDir()
	content := filepath.Join(ctrdDir, "root", "io.containerd.content.v1.content")
	srv := startServe(t, c, sock, content)

	d, err := containerdtest.StartWith(ctx, ctrdDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	ctr := func(args ...string) string {
		t.Helper()
		out, err := d.Ctr(ctx, args...)
		if err != nil {
			t.Fatalf("%v\ncontainerd log: %s\nserve log: %s", err, d.Log(), srv.logText())
		}
		return out
	}
	if out := ctr("plugins", "ls"); !regexpLine(out, "io.containerd.snapshotter.v1", "layervisor", "ok") {
		t.Fatalf("snapshotter plugin not ok:\n%s", out)
	}

	archive := demoImage(t, "oci-tar")
	ctr("images", "import", "--snapshotter", "layervisor", archive)
	ref := strings.Fields(ctr("images", "ls", "-q"))
	if len(ref) != 1 {
		t.Fatalf("want one image, got %q", ref)
	}
	layersBefore := layerMounts(t, c.root)
	if len(layersBefore) < 2 {
		t.Fatalf("want the image's layers mounted under mounts/shared, got %v", layersBefore)
	}
	if got := strings.Contains(srv.logText(), "differ: layer converted"); got != viaDiffer {
		t.Errorf("layers converted by the differ: %v, want %v\n%s", got, viaDiffer, srv.logText())
	}

	script, want := demoScript()
	run := func(id string) {
		t.Helper()
		out := ctr("run", "--rm", "--snapshotter", "layervisor", ref[0], id, "/bin/sh", "-c", script)
		if out != want && strings.HasPrefix(want, out) {
			// ctr exited 0 (so the script ran to its end) with the last
			// lines not copied yet: ctr 1.6 loses the tail of a task's
			// output now and then on a loaded machine. Once more.
			t.Logf("container %s: ctr lost the end of its output (%q); running it again", id, strings.TrimPrefix(want, out))
			out = ctr("run", "--rm", "--snapshotter", "layervisor", ref[0], id+"-again", "/bin/sh", "-c", script)
		}
		if out != want {
			t.Fatalf("container %s printed:\n%s\nwant:\n%s", id, out, want)
		}
	}
	run("c1")

	// The store has the layers: `image import` of the same archive converts nothing.
	var res struct{ Converted, Reused int }
	if err := json.Unmarshal([]byte(c.ok("--json", "image", "import", archive, "--name", "demo-cli")), &res); err != nil {
		t.Fatal(err)
	}
	// Only verified layers are shared: the differ's (2.x). Containerd
	// 1.6's walking differ leaves directories, whose commits stay private
	// to their snapshots (their chain IDs cannot be checked).
	wantConv, wantReuse := 0, len(layersBefore)
	if !viaDiffer {
		wantConv, wantReuse = len(layersBefore), 0
	}
	if res.Converted != wantConv || res.Reused != wantReuse {
		t.Errorf("image import after containerd: converted %d, reused %d; want %d, %d", res.Converted, res.Reused, wantConv, wantReuse)
	}
	c.ok("image", "rm", "demo-cli")
	// gc keeps what the snapshots use.
	c.ok("gc")
	run("c2")

	// A SIGKILLed daemon restarted under the running containerd loses
	// nothing and mounts nothing twice; a container running across the
	// crash keeps its root file system and scratch.
	ctr("run", "-d", "--snapshotter", "layervisor", ref[0], "long", "/bin/sh", "-c", "echo alive > /tmp/a; exec sleep 1000")
	srv.stop(syscall.SIGKILL)
	srv = startServe(t, c, sock, content)
	waitPlugin(t, d)
	if out := ctr("tasks", "exec", "--exec-id", "e1", "long", "cat", "/tmp/a"); out != "alive\n" {
		t.Errorf("container running across the crash reads %q, want alive", out)
	}
	ctr("tasks", "rm", "-f", "long")
	ctr("containers", "rm", "long")
	if got := layerMounts(t, c.root); !slices.Equal(got, layersBefore) {
		t.Errorf("layer mounts after restart %v, want %v", got, layersBefore)
	}
	run("c3")

	ctr("images", "rm", "--sync", ref[0])
	if out := strings.TrimSpace(ctr("snapshots", "--snapshotter", "layervisor", "ls")); strings.Count(out, "\n") > 0 {
		t.Errorf("snapshots left after image rm:\n%s", out)
	}
	if got := layerMounts(t, c.root); len(got) != 0 {
		t.Errorf("layer mounts left after image rm: %v", got)
	}

	// The other way round: layers the CLI imported are not converted again.
	c.ok("image", "import", archive, "--name", "demo-cli")
	srv.stop(syscall.SIGTERM)
	srv = startServe(t, c, sock, content)
	waitPlugin(t, d)
	ctr("images", "import", "--snapshotter", "layervisor", archive)
	log := srv.logText()
	if strings.Contains(log, `msg="stored layer"`) {
		t.Errorf("layers converted again although the store had them:\n%s", log)
	}
	// containerd 2.x names the target layer (snapshot.ref): Prepare answers
	// "already exists" and nothing is unpacked; 1.6 unpacks, Commit keeps
	// the stored layer.
	if viaDiffer {
		if n := strings.Count(log, "snapshot from stored layer"); n != len(layersBefore) {
			t.Errorf("%d layers taken from the store at Prepare, want %d:\n%s", n, len(layersBefore), log)
		}
	} else if n := strings.Count(log, "converted=false"); n != len(layersBefore) {
		t.Errorf("%d commits kept the stored layer, want %d:\n%s", n, len(layersBefore), log)
	}
	run("c4")
	ctr("images", "rm", "--sync", ref[0])
	c.ok("image", "rm", "demo-cli")

	if err := srv.stop(syscall.SIGTERM); err != nil {
		t.Errorf("layervisor serve on SIGTERM: %v\n%s", err, srv.logText())
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("socket %s left after a clean stop", sock)
	}
	c.ok("gc")
	if out := strings.TrimSpace(c.ok("--json", "layer", "ls")); out != "[]" && out != "null" {
		t.Errorf("layers left after gc: %s", out)
	}
}

// waitPlugin waits until containerd reaches a restarted snapshotter:
// containerd redials proxy plugins with a backoff. It prepares and removes
// a probe snapshot, because listing may be answered from containerd's own
// metadata without reaching the plugin at all (when there are no
// snapshots), which let the next command race the redial.
func waitPlugin(t *testing.T, d *containerdtest.Daemon) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		_, err := d.Ctr(ctx, "snapshots", "--snapshotter", "layervisor", "prepare", "lv-probe")
		if err == nil || strings.Contains(err.Error(), "already exists") {
			if _, err = d.Ctr(ctx, "snapshots", "--snapshotter", "layervisor", "rm", "lv-probe"); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not reach the restarted snapshotter: %v", err)
		}
	}
}

// regexpLine reports whether some line of out has all fields in order.
func regexpLine(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		i := 0
		for _, x := range f {
			if i < len(fields) && x == fields[i] {
				i++
			}
		}
		if i == len(fields) {
			return true
		}
	}
	return false
}

// TestPoisonContainerd16 is issue #20 on Debian's containerd 1.6: a client
// of namespace evil commits a snapshot it wrote under the chain ID of a
// real image's base layer; namespace good then imports that image and runs
// it. Good must see the image, and evil keeps its own snapshot.
func TestPoisonContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testutil.NeedTool(t, "runc")
	testPoison(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

// TestPoisonContainerd2 is the same on containerd 2.x, where good's unpack
// asks Prepare for the layer by chain ID (snapshot.ref) first.
func TestPoisonContainerd2(t *testing.T) {
	testutil.NeedTool(t, "runc")
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err != nil {
		testutil.Unavailable(t, "containerd 2.x not built (scripts/deps.sh): "+err.Error())
	}
	testPoison(t, containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2})
}

func testPoison(t *testing.T, opts containerdtest.Options) {
	c := newCLI(t)
	ctx := context.Background()
	sockDir, err := os.MkdirTemp("", "lv-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.sock")
	opts.Config = fmt.Sprintf(opts.Config, sock)
	ctrdDir := t.TempDir()
	srv := startServe(t, c, sock, filepath.Join(ctrdDir, "root", "io.containerd.content.v1.content"))
	d, err := containerdtest.StartWith(ctx, ctrdDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	ctr := func(ns string, args ...string) string {
		t.Helper()
		out, err := d.CtrIn(ctx, ns, args...)
		if err != nil {
			t.Fatalf("%v\ncontainerd log: %s\nserve log: %s", err, d.Log(), srv.logText())
		}
		return out
	}
	// Clients of their own namespaces, through containerd's API, their
	// snapshots held by leases (ctr's would be garbage once it exits).
	client := func(ns string) (*containerdtest.Client, snapshots.Snapshotter, context.Context) {
		t.Helper()
		cl, err := d.DialIn(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl, cl.Snapshotter("layervisor"), cl.Context(ctx)
	}
	withMounts := func(ms []mount.Mount, err error, fn func(dir string)) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\nserve log: %s", err, srv.logText())
		}
		dir := t.TempDir()
		if err := mount.All(ms, dir); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := mount.UnmountAll(dir, 0); err != nil {
				t.Error(err)
			}
		}()
		fn(dir)
	}

	archive := demoImage(t, "oci-tar")
	img, err := ociimage.Open(archive, ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	base := img.Layers[0].ChainID.String()
	img.Close()

	// Evil: a working root file system of its own (the host's busybox)
	// with a marker, committed under the image's base layer chain ID.
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	_, evil, evilCtx := client("evil")
	ms, err := evil.Prepare(evilCtx, "evil-key", "")
	withMounts(ms, err, func(dir string) {
		for _, sub := range []string{"bin", "etc", "tmp", "proc", "dev", "sys"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), busybox, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, a := range imagebuild.BusyboxApplets {
			if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "evil"), []byte("planted by namespace evil\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if err := evil.Commit(evilCtx, base, "evil-key"); err != nil {
		t.Fatal(err)
	}

	// Good imports the image and runs it: the image's content, nothing of evil's.
	ctr("good", "images", "import", "--snapshotter", "layervisor", archive)
	ref := strings.Fields(ctr("good", "images", "ls", "-q"))
	if len(ref) != 1 {
		t.Fatalf("want one image in namespace good, got %q", ref)
	}
	script, want := demoScript()
	script += "\n[ -e /evil ] && cat /evil\nexit 0"
	if out := ctr("good", "run", "--rm", "--snapshotter", "layervisor", ref[0], "good-c", "/bin/sh", "-c", script); out != want {
		t.Errorf("good's container printed:\n%s\nwant:\n%s", out, want)
	}
	_, good, goodCtx := client("good")
	ms, err = good.View(goodCtx, "good-view", base)
	withMounts(ms, err, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "evil")); err == nil {
			t.Errorf("good's base layer holds evil's file: %q", b)
		}
		if _, err := os.Stat(filepath.Join(dir, "etc/passwd")); err != nil {
			t.Errorf("good's base layer is not the image's: %v", err)
		}
	})
	if err := good.Remove(goodCtx, "good-view"); err != nil {
		t.Error(err)
	}
	// Evil keeps what it committed.
	ms, err = evil.View(evilCtx, "evil-view", base)
	withMounts(ms, err, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "evil")); err != nil || string(b) != "planted by namespace evil\n" {
			t.Errorf("evil's own snapshot lost its content: %q, %v", b, err)
		}
	})
	for _, k := range []string{"evil-view", base} {
		if err := evil.Remove(evilCtx, k); err != nil {
			t.Error(err)
		}
	}
	ctr("good", "images", "rm", "--sync", ref[0])
	if err := srv.stop(syscall.SIGTERM); err != nil {
		t.Errorf("layervisor serve on SIGTERM: %v\n%s", err, srv.logText())
	}
	c.ok("gc")
	if out := strings.TrimSpace(c.ok("--json", "layer", "ls")); out != "[]" && out != "null" {
		t.Errorf("layers left after gc: %s", out)
	}
}

// TestServeLeavesNonSocketAlone: whatever is at --socket that is not a
// socket stays as it is, and serve fails naming it.
func TestServeLeavesNonSocketAlone(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "precious")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "subdir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, sub} {
		cmd := exec.Command(c.bin, "--root", c.root, "serve", "--socket", p)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// Until it exits, or serves (which would mean it replaced p).
		for served := false; !served; {
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("serve --socket %s succeeded", p)
				}
				if !strings.Contains(stderr.String(), p) || !strings.Contains(stderr.String(), "not a socket") {
					t.Errorf("serve --socket %s: stderr %q does not name it as not a socket", p, stderr.String())
				}
				served = true
			case <-time.After(20 * time.Millisecond):
				if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() == os.ModeSocket {
					cmd.Process.Signal(syscall.SIGTERM)
					<-done
					t.Fatalf("serve replaced %s with its socket", p)
				}
			}
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("%s is now %q, %v", file, b, err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Errorf("%s is gone: %v", sub, err)
	}
}

// TestListenUnixSocketAppearsWithItsMode: the socket appears at its path
// only by a rename (never created there, where it would have the umask's
// permissions for a while), already with its final mode, even under an
// umask that would leave it open to everyone; no temp directory remains.
// A live socket is refused and a stale one replaced.
func TestListenUnixSocketAppearsWithItsMode(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	old := unix.Umask(0)
	l, remove, err := listenUnix(sock, 0o600)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	first := uint32(0)
	buf := make([]byte, 64<<10)
	for first == 0 {
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("no inotify event for %s: %v", sock, err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			if name == "s.sock" && first == 0 {
				first = ev.Mask
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	if first&unix.IN_MOVED_TO == 0 {
		t.Errorf("the socket appeared by event %#x, want a rename (IN_MOVED_TO %#x): it existed at its path before it had its mode", first, unix.IN_MOVED_TO)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v, %v; want a socket of mode 0600", sock, fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left in the socket's directory: %v", ents)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial the socket: %v", err)
	}
	conn.Close()

	if _, _, err := listenUnix(sock, 0o600); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Errorf("listen on a live socket: %v, want refused", err)
	}
	l.Close() // a killed daemon's socket stays behind, stale
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("closing removed the socket: %v", err)
	}
	l2, remove2, err := listenUnix(sock, 0o600)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	remove() // the first listener's: not this socket any more
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("the old listener's cleanup removed the new socket: %v", err)
	}
	l2.Close()
	remove2()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after its cleanup: %v", err)
	}
}

// panicky is a snapshotter whose Stat of "boom" and Walk panic.
type panicky struct{ snapshots.Snapshotter }

func (panicky) Stat(_ context.Context, key string) (snapshots.Info, error) {
	if key == "boom" {
		panic("a bug reached by a client")
	}
	return snapshots.Info{Name: key, Kind: snapshots.KindCommitted}, nil
}

func (panicky) Walk(context.Context, snapshots.WalkFunc, ...string) error {
	panic("a bug in a stream")
}

// TestServePanicAnswersInternal: a panic in a call (unary or stream)
// answers it with Internal, and the server goes on answering.
func TestServePanicAnswersInternal(t *testing.T) {
	dir, err := os.MkdirTemp("", "lv-panic-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	rpc := newRPCServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(panicky{}))
	go rpc.Serve(l)
	defer rpc.Stop()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "s"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := snapshotsapi.NewSnapshotsClient(conn)
	ctx := context.Background()
	stat := func(key string) error {
		_, err := client.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "x", Key: key})
		return err
	}
	if err := stat("boom"); status.Code(err) != codes.Internal {
		t.Errorf("Stat that panics: %v, want code Internal", err)
	}
	if err := stat("fine"); err != nil {
		t.Errorf("Stat after a panic: %v", err)
	}
	stream, err := client.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: "x"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Internal {
		t.Errorf("List that panics: %v, want code Internal", err)
	}
	if err := stat("fine"); err != nil {
		t.Errorf("Stat after a panic in a stream: %v", err)
	}
}
