package shim_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/shim"
	"github.com/layervisor/layervisor/pkg/uvm"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// bins holds the shim, layervisor and the agent (put on containerd's PATH).
func bins(t testing.TB) string { return testutil.Programs(t) }

var (
	sharedOnce sync.Once
	sharedVM   string
	sharedErr  error
)

// sharedVMDir holds the initramfs (boot/) and UVM templates (templates/)
// the tests' store roots link to: built and saved once.
func sharedVMDir(t testing.TB) string {
	t.Helper()
	sharedOnce.Do(func() {
		sharedVM, sharedErr = testutil.SharedDir("lv-shim-vm-")
		for _, d := range []string{"boot", "templates"} {
			if sharedErr == nil {
				sharedErr = os.Mkdir(filepath.Join(sharedVM, d), 0o755)
			}
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedVM
}

func bootDir() string {
	if d := os.Getenv("LAYERVISOR_BOOT_DIR"); d != "" {
		return d
	}
	return "/var/cache/layervisor/boot"
}

func needVM(t testing.TB) {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "qemu-system-x86_64")
	if _, err := os.Stat(filepath.Join(bootDir(), "vmlinuz")); err != nil {
		testutil.Unavailable(t, "no UVM kernel (bash scripts/deps.sh): "+err.Error())
	}
}

// TestCtrRunContainerd2 runs a container in a utility VM through
// containerd 2.4's ctr with the layervisor runtime and snapshotter.
func TestCtrRunContainerd2(t *testing.T) {
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err != nil {
		testutil.Unavailable(t, "containerd 2.x not built (bash scripts/deps.sh): "+err.Error())
	}
	testCtrRun(t, containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2})
}

// TestCtrRunContainerd16 is the same with Debian's containerd 1.6.
func TestCtrRunContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrRun(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

// ctrEnv is a private containerd with the layervisor snapshotter (a
// `layervisor serve`) and runtime, and the demo image imported.
type ctrEnv struct {
	t    testing.TB
	opts containerdtest.Options
	d    *containerdtest.Daemon
	srv  *serveDaemon
	bin  string // the shim, layervisor and the agent
	root string // layervisor's store root
	ref  string // the demo image
}

// setupCtr starts the daemons; cleanups stop them and check nothing of
// the root is left.
func setupCtr(t testing.TB, opts containerdtest.Options) *ctrEnv {
	needVM(t)
	bin := bins(t)
	vmDir := sharedVMDir(t)
	ctx := context.Background()
	// A short root: the UVM's virtiofsd sockets live under it, and a
	// unix socket's path is bounded to 107 bytes (t.TempDir's names, with
	// the test's name in them, come close).
	rootDir, err := os.MkdirTemp("", "lv-shim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rootDir) })
	root := filepath.Join(rootDir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"boot", "templates"} {
		if err := os.Symlink(filepath.Join(vmDir, d), filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { assertNoLeaks(t, root) })
	// containerd passes its environment on to the shims it starts.
	t.Setenv(shim.RootEnv, root)
	t.Setenv("LAYERVISOR_BOOT_DIR", bootDir())
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	sockDir, err := os.MkdirTemp("", "lv-sock-") // socket names are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.sock")
	opts.Config = fmt.Sprintf(opts.Config, sock)
	ctrdDir := t.TempDir()
	srv := startServe(t, filepath.Join(bin, "layervisor"), root, sock, filepath.Join(ctrdDir, "root", "io.containerd.content.v1.content"))
	d, err := containerdtest.StartWith(ctx, ctrdDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	// Runs first: a failed test leaves its shims (and their VMs) running;
	// these are the ones working in this test's root.
	t.Cleanup(func() { killShims(t, root, filepath.Join(bin, "layervisor")) })
	e := &ctrEnv{t: t, opts: opts, d: d, srv: srv, bin: bin, root: root}
	if _, err := d.Ctr(ctx, "images", "import", "--snapshotter", "layervisor", demoImage(t)); err != nil {
		e.fail("%v", err)
	}
	out, err := d.Ctr(ctx, "images", "ls", "-q")
	refs := strings.Fields(out)
	if err != nil || len(refs) != 1 {
		e.fail("images ls: %q, %v", out, err)
	}
	e.ref = refs[0]
	return e
}

func (e *ctrEnv) fail(format string, args ...any) {
	e.t.Helper()
	e.t.Fatalf("%s\ncontainerd log: %s\nserve log: %s", fmt.Sprintf(format, args...), tail(e.d.Log(), 6000), tail(e.srv.logText(), 2000))
}

// events subscribes to containerd's events, as it forwards them to its
// clients; stop ends the subscription and returns what came.
func (e *ctrEnv) events() (stop func() string) {
	evOut := &bytes.Buffer{}
	ev := exec.Command(ctrPath(e.opts), "-a", e.d.Socket, "-n", "bench", "events")
	ev.Stdout = evOut
	if err := ev.Start(); err != nil {
		e.t.Fatal(err)
	}
	evDone := make(chan struct{})
	go func() { ev.Wait(); close(evDone) }()
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			ev.Process.Signal(syscall.SIGTERM)
			<-evDone
		})
		return evOut.String()
	}
	e.t.Cleanup(func() { stop() })
	time.Sleep(300 * time.Millisecond) // subscribed
	return stop
}

func testCtrRun(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	d, root, fail := e.d, e.root, e.fail
	ctx := context.Background()
	refs := []string{e.ref}
	stopEvents := e.events()

	start := time.Now()
	out, err := d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", refs[0], "lv-e2e",
		"sh", "-c", "cat /etc/demo-release; uname -r; exit 3")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		fail("ctr run: want exit status 3, got %v (output %q)", err, out)
	}
	t.Logf("ctr run --rm in a utility VM: %v", time.Since(start).Round(time.Millisecond))
	kv, err := os.ReadFile(filepath.Join(bootDir(), "kernel-version"))
	if err != nil {
		t.Fatal(err)
	}
	var host syscall.Utsname
	syscall.Uname(&host)
	hostRelease := utsString(host.Release[:])
	guest := strings.TrimSpace(string(kv))
	want := "layervisor demo 2\n" + guest + "\n"
	if !strings.HasPrefix(out, want) {
		fail("ctr run printed %q, want %q (the image's file, then the guest kernel)", out, want)
	}
	if guest == hostRelease {
		t.Fatalf("guest kernel %q is the host's: the test cannot tell them apart", guest)
	}
	// The task is gone and its shim with it.
	if out, err := d.Ctr(ctx, "tasks", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		fail("tasks after run --rm: %q, %v", out, err)
	}
	if out, err := d.Ctr(ctx, "containers", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		fail("containers after run --rm: %q, %v", out, err)
	}
	waitNoShim(t, root)
	if ps := uvm.Processes(root); len(ps) > 0 {
		fail("QEMU/virtiofsd left after run --rm: %v", ps)
	}

	// A detached task killed with SIGKILL: Kill reaches the guest, the exit
	// (137) is recorded and published, delete tears the VM down.
	if out, err := d.Ctr(ctx, "run", "-d", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", refs[0], "lv-kill", "sleep", "1000"); err != nil {
		fail("ctr run -d: %v %s", err, out)
	}
	if out, err := d.Ctr(ctx, "tasks", "ls"); err != nil || !regexp.MustCompile(`lv-kill\s+\d+\s+RUNNING`).MatchString(out) {
		fail("tasks ls after run -d: %q, %v", out, err)
	}
	// Only root reaches a shim's socket: it drives the VMs.
	if st, err := os.Stat(shim.SocketDir); err != nil {
		fail("socket directory: %v", err)
	} else if st.Mode().Perm() != 0o700 {
		fail("socket directory %s: mode %v, want 0700", shim.SocketDir, st.Mode().Perm())
	}
	socks, _ := filepath.Glob(filepath.Join(shim.SocketDir, "*.sock"))
	for _, p := range socks {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm() != 0o600 {
			fail("shim socket %s: mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	if out, err := d.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "lv-kill"); err != nil {
		fail("tasks kill: %v %s", err, out)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err := d.Ctr(ctx, "tasks", "ls")
		if err == nil && regexp.MustCompile(`lv-kill\s+\d+\s+STOPPED`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			fail("task not stopped after SIGKILL: %q, %v", out, err)
		}
	}
	for _, args := range [][]string{{"tasks", "rm", "lv-kill"}, {"containers", "rm", "lv-kill"}} {
		if out, err := d.Ctr(ctx, args...); err != nil {
			fail("%v: %v %s", args, err, out)
		}
	}
	waitNoShim(t, root)
	if ps := uvm.Processes(root); len(ps) > 0 {
		fail("QEMU/virtiofsd left after tasks rm: %v", ps)
	}

	events := stopEvents()
	for _, want := range []string{
		`/tasks/create .*lv-e2e`, `/tasks/start .*lv-e2e`, `/tasks/exit .*lv-e2e.*exit_status"?: ?3\b`, `/tasks/delete .*lv-e2e`,
		`/tasks/exit .*lv-kill.*exit_status"?: ?137\b`, `/tasks/delete .*lv-kill`,
	} {
		if !regexp.MustCompile(want).MatchString(events) {
			t.Errorf("no event matching %q in:\n%s", want, events)
		}
	}
	logShimComplaints(t, d)
}

// killShims kills the shims working in root (their QEMU dies with them)
// and lets `layervisor gc` reap their UVMs.
func killShims(t testing.TB, root, lv string) {
	pids := shimPIDs(root)
	if len(pids) == 0 {
		return
	}
	t.Logf("killing shims left running: %v", pids)
	for _, p := range pids {
		if pid, err := strconv.Atoi(p); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(shimPIDs(root)) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command(lv, "--root", root, "gc").CombinedOutput(); err != nil {
		t.Logf("layervisor gc: %v\n%s", err, out)
	}
}

func ctrPath(o containerdtest.Options) string {
	if o.Ctr != "" {
		return o.Ctr
	}
	return "ctr"
}

// logShimComplaints shows containerd's errors and warnings about the shim.
func logShimComplaints(t testing.TB, d *containerdtest.Daemon) {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "containerd.log"))
	for _, l := range strings.Split(string(b), "\n") {
		ll := strings.ToLower(l)
		if (strings.Contains(ll, "level=error") || strings.Contains(ll, "level=warn")) && (strings.Contains(l, "lv-") || strings.Contains(l, "layervisor")) {
			t.Logf("containerd: %s", l)
		}
	}
}

// waitNoShim waits for the shim processes to exit (they exit after
// Shutdown, asynchronously to ctr).
func waitNoShim(t testing.TB, root string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		pids := shimPIDs(root)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("shim processes left: %v", pids)
			return
		}
	}
}

// shimPIDs lists the shim processes working in root.
func shimPIDs(root string) []string {
	ents, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || filepath.Base(string(bytes.SplitN(cmd, []byte{0}, 2)[0])) != shim.BinaryName {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if slices.Contains(strings.Split(string(env), "\x00"), shim.RootEnv+"="+root) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// assertNoLeaks checks, after everything stopped, that no QEMU,
// virtiofsd, mount or loop device of the root is left, and no UVM state.
func assertNoLeaks(t testing.TB, root string) {
	t.Helper()
	for _, p := range uvm.Processes(root) {
		t.Errorf("leaked %+v", p)
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
	if ms, err := mountinfo.Read(); err == nil {
		for _, m := range ms {
			if strings.HasPrefix(m.Mountpoint, root+"/") {
				t.Errorf("leaked mount %s", m.Mountpoint)
			}
		}
	}
	if devs, err := loop.List(); err == nil {
		for _, d := range devs {
			if strings.HasPrefix(d.Backing, root+"/") {
				t.Errorf("leaked loop device %s (%s)", d.Path, d.Backing)
			}
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "uvms")); len(ents) > 0 {
		t.Errorf("UVM state left: %d entries in %s/uvms", len(ents), root)
	}
}

type serveDaemon struct {
	proc *os.Process
	done chan struct{}
	log  string
}

// startServe starts `layervisor serve` (snapshotter and differ) and waits
// for its socket; cleanup stops it with SIGTERM, which unmounts its layers.
func startServe(t testing.TB, bin, root, sock, content string) *serveDaemon {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "serve.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--root", root, "--log-level", "debug", "serve", "--socket", sock, "--containerd-content", content)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &serveDaemon{proc: cmd.Process, done: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.proc.Signal(syscall.SIGTERM); <-d.done })
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("layervisor serve exited:\n%s", d.logText())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (d *serveDaemon) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// demoImage writes the demo image as an OCI archive, with each hard link
// header carrying its file's mode as tar tools write them (containerd
// 1.6's walking differ sets the inode's mode from the link header).
func demoImage(t testing.TB) string {
	t.Helper()
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "demo.tar")
	if err := im.Write(imagebuild.OCITar, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCtrTaskOpsContainerd2 drives a running task through containerd
// 2.4's ctr: exec (with and without a terminal), ps, metrics, pause and
// resume; then the shim is SIGKILLed and ctr and gc must still leave
// nothing behind.
func TestCtrTaskOpsContainerd2(t *testing.T) {
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err != nil {
		testutil.Unavailable(t, "containerd 2.x not built (bash scripts/deps.sh): "+err.Error())
	}
	testCtrTaskOps(t, containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2})
}

// TestCtrTaskOpsContainerd16 is the same with Debian's containerd 1.6.
func TestCtrTaskOpsContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrTaskOps(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

func testCtrTaskOps(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	d, fail := e.d, e.fail
	ctx := context.Background()
	stopEvents := e.events()
	const id = "lv-ops"
	if out, err := d.Ctr(ctx, "run", "-d", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", e.ref, id, "sleep", "1000"); err != nil {
		fail("ctr run -d: %v %s", err, out)
	}

	// Exec: output and exit status.
	start := time.Now()
	out, err := d.Ctr(ctx, "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo hi; echo err >&2; exit 4")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || out != "hi\n" {
		fail("task exec: want \"hi\\n\" and exit status 4, got %q, %v", out, err)
	}
	t.Logf("ctr task exec: %v", time.Since(start).Round(time.Millisecond))
	// A command the container does not have.
	out, err = d.Ctr(ctx, "task", "exec", "--exec-id", "e-missing", id, "no-such-command")
	if !errors.As(err, &ee) || ee.ExitCode() != 127 {
		fail("task exec of a missing command: want exit status 127, got %q, %v", out, err)
	}
	// With a terminal: ctr wants one of its own, which script gives it.
	// (The image's busybox has no tty applet: readlink tells the same.)
	ctrArgs := []string{ctrPath(opts), "-a", d.Socket, "-n", "bench", "task", "exec", "-t", "--exec-id", "e2", id, "readlink", "/proc/self/fd/0"}
	cmd := exec.CommandContext(ctx, "script", "-qec", strings.Join(ctrArgs, " "), "/dev/null")
	b, err := cmd.CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)/dev/pts/\d+\r*$`).Match(b) {
		fail("task exec -t: want a terminal /dev/pts/N, got %q, %v", b, err)
	}

	// The container's processes, by their guest pids.
	out, err = d.Ctr(ctx, "task", "ps", id)
	if err != nil || !regexp.MustCompile(`(?m)^\d+\s`).MatchString(out) {
		fail("task ps: %q, %v", out, err)
	}

	// Metrics from the guest's cgroup.
	out, err = d.Ctr(ctx, "task", "metrics", id)
	m := regexp.MustCompile(`memory\.usage\s+(\d+)`).FindStringSubmatch(out)
	if err != nil || m == nil || m[1] == "0" {
		fail("task metrics: want a memory usage, got %q, %v", out, err)
	}
	t.Logf("task metrics:\n%s", out)

	// Pause, resume.
	if out, err := d.Ctr(ctx, "task", "pause", id); err != nil {
		fail("task pause: %v %s", err, out)
	}
	if out, err := d.Ctr(ctx, "task", "ls"); err != nil || !regexp.MustCompile(id+`\s+\d+\s+PAUSED`).MatchString(out) {
		fail("task ls after pause: %q, %v", out, err)
	}
	if out, err := d.Ctr(ctx, "task", "resume", id); err != nil {
		fail("task resume: %v %s", err, out)
	}
	if out, err := d.Ctr(ctx, "task", "ls"); err != nil || !regexp.MustCompile(id+`\s+\d+\s+RUNNING`).MatchString(out) {
		fail("task ls after resume: %q, %v", out, err)
	}
	// Still alive after the thaw: an exec runs.
	if out, err := d.Ctr(ctx, "task", "exec", "--exec-id", "e3", id, "true"); err != nil {
		fail("task exec after resume: %v %s", err, out)
	}

	events := stopEvents()
	for _, want := range []string{
		`/tasks/exec-added .*e1`, `/tasks/exec-started .*e1`, `/tasks/exit .*"?e1"?.*exit_status"?: ?4\b`,
		`/tasks/paused .*` + id, `/tasks/resumed .*` + id,
	} {
		if !regexp.MustCompile(want).MatchString(events) {
			t.Errorf("no event matching %q in:\n%s", want, events)
		}
	}

	// The shim dies with SIGKILL: its VM dies with it; ctr cleans up what
	// containerd holds and gc what the shim held.
	pids := shimPIDs(e.root)
	if len(pids) != 1 {
		fail("shims of the task: %v", pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNoShim(t, e.root)
	for _, args := range [][]string{{"task", "rm", "-f", id}, {"container", "rm", id}} {
		if out, err := d.Ctr(ctx, args...); err != nil {
			// containerd may have removed the dead task itself.
			if !strings.Contains(err.Error(), "not found") {
				fail("%v after the shim was killed: %v %s", args, err, out)
			}
		}
	}
	if out, err := exec.Command(filepath.Join(e.bin, "layervisor"), "--root", e.root, "gc").CombinedOutput(); err != nil {
		fail("layervisor gc: %v\n%s", err, out)
	} else {
		t.Logf("layervisor gc: %s", out)
	}
	if ps := uvm.Processes(e.root); len(ps) > 0 {
		fail("QEMU/virtiofsd left after the shim was killed: %v", ps)
	}
	if out, err := d.Ctr(ctx, "task", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		fail("tasks left: %q, %v", out, err)
	}
	if out, err := d.Ctr(ctx, "container", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		fail("containers left: %q, %v", out, err)
	}
	// assertNoLeaks (cleanup) checks mounts, loop devices and UVM state.
	logShimComplaints(t, d)
}
