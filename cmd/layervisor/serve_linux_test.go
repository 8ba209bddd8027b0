package main

import (
	"archive/tar"
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

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/imagebuild"
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

// layerMounts lists the layer mounts of the snapshotter under root.
func layerMounts(t *testing.T, root string) []string {
	t.Helper()
	ms, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	prefix := filepath.Join(root, "snapshots", "l") + "/"
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

	archive := containerdDemoImage(t)
	ctr("images", "import", "--snapshotter", "layervisor", archive)
	ref := strings.Fields(ctr("images", "ls", "-q"))
	if len(ref) != 1 {
		t.Fatalf("want one image, got %q", ref)
	}
	layersBefore := layerMounts(t, c.root)
	if len(layersBefore) < 2 {
		t.Fatalf("want the image's layers mounted under snapshots/l, got %v", layersBefore)
	}
	if got := strings.Contains(srv.logText(), "differ: layer converted"); got != viaDiffer {
		t.Errorf("layers converted by the differ: %v, want %v\n%s", got, viaDiffer, srv.logText())
	}

	script, want := demoScript()
	run := func(id string) {
		t.Helper()
		if out := ctr("run", "--rm", "--snapshotter", "layervisor", ref[0], id, "/bin/sh", "-c", script); out != want {
			t.Fatalf("container %s printed:\n%s\nwant:\n%s", id, out, want)
		}
	}
	run("c1")

	// The store has the layers: `image import` of the same archive converts nothing.
	var res struct{ Converted, Reused int }
	if err := json.Unmarshal([]byte(c.ok("--json", "image", "import", archive, "--name", "demo-cli")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Converted != 0 || res.Reused != len(layersBefore) {
		t.Errorf("image import after containerd: converted %d, reused %d; want 0, %d", res.Converted, res.Reused, len(layersBefore))
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

// containerdDemoImage is the demo image with the file's mode in every hard
// link header, as tar tools write them: containerd's applier (the walking
// differ) sets the inode's mode from the link header, so imagebuild's
// mode-0 link headers would leave busybox without permissions.
func containerdDemoImage(t *testing.T) string {
	t.Helper()
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range im.Layers {
		modes := map[string]int64{}
		for i, e := range l.Entries {
			if e.Header.Typeflag == tar.TypeReg {
				modes[e.Header.Name] = e.Header.Mode
			}
			if e.Header.Typeflag == tar.TypeLink && e.Header.Mode == 0 {
				l.Entries[i].Header.Mode = modes[e.Header.Linkname]
			}
		}
	}
	out := filepath.Join(t.TempDir(), "demo.tar")
	if err := im.Write(imagebuild.OCITar, out); err != nil {
		t.Fatal(err)
	}
	return out
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
