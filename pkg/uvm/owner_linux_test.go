package uvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
)

func TestProcStart(t *testing.T) {
	me := self()
	if me.Start == 0 || !me.Alive() {
		t.Fatalf("self %+v not alive", me)
	}
	if (&Owner{PID: me.PID, Start: me.Start + 1}).Alive() {
		t.Fatal("a PID with another start time counts as alive (PID reuse)")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if (&Owner{PID: cmd.Process.Pid}).Alive() {
		t.Fatal("an exited process counts as alive")
	}
}

// plainConfig is a UVM that is never booted: no QEMU or kernel needed.
func plainConfig(t *testing.T, root, id string) Config {
	testutil.NeedRoot(t)
	return Config{ID: id, Root: root, ScratchSize: 64 << 20}
}

func TestCreateRefusesExisting(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	u, err := Create(ctx, plainConfig(t, root, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := Load(root, "x"); st.Owner == nil || st.Owner.PID != os.Getpid() {
		t.Fatalf("owned UVM records owner %+v", st.Owner)
	}
	// Held by its owner (us, through another open file): in use.
	if _, err := Create(ctx, plainConfig(t, root, "x")); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("create of an owned id: %v", err)
	}
	u.Close()
	if _, err := Create(ctx, plainConfig(t, root, "x")); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "created") {
		t.Fatalf("create of an existing id: %v", err)
	}
	if _, err := os.Stat(filepath.Join(Dir(root, "x"), "scratch.img")); err != nil {
		t.Fatalf("a refused create touched the existing UVM: %v", err)
	}
	// Long-lived: no owner; refused again whatever its state.
	cfg := plainConfig(t, root, "y")
	cfg.LongLived = true
	y, err := Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if y.State().Owner != nil {
		t.Fatalf("long-lived UVM has an owner: %+v", y.State().Owner)
	}
	y.Close()
	for _, status := range []string{"running", "stopped", "failed"} {
		y.state.Status = status
		y.save()
		if _, err := Create(ctx, cfg); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), status) {
			t.Fatalf("create of a %s id: %v", status, err)
		}
	}
	// The leftover of a create that died before recording anything is
	// taken over.
	os.MkdirAll(filepath.Join(Dir(root, "z"), "debug"), 0o755)
	z, err := Create(ctx, plainConfig(t, root, "z"))
	if err != nil {
		t.Fatalf("create over a half-made dir: %v", err)
	}
	for _, v := range []*UVM{u, y, z} {
		v.state.Status = "stopped"
		if err := v.Remove(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "uvms")); len(ents) != 0 {
		t.Fatalf("left in uvms/: %v", ents)
	}
}

// No nil controller reaches a caller: a UVM not started here says why.
func TestControllersNeedTheStarter(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	u, err := Create(ctx, plainConfig(t, root, "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Remove(ctx)
	check := func(u *UVM, want error) {
		t.Helper()
		c1, err1 := u.SCSI()
		c2, err2 := u.VPMem()
		c3, err3 := u.Shares()
		for _, err := range []error{err1, err2, err3} {
			if !errors.Is(err, want) || !strings.Contains(err.Error(), "x") {
				t.Errorf("want %v naming the UVM, got %v", want, err)
			}
		}
		if c1 != nil || c2 != nil || c3 != nil {
			t.Error("a controller came with the error")
		}
	}
	check(u, ErrNotReady)
	// It belongs to this (live) process: Open says so at once, and the UVM
	// it returns for inspection has no controllers.
	o, err := Open(ctx, root, "x")
	if o == nil || !errors.Is(err, ErrNotOwner) {
		t.Fatalf("open of an owned UVM: %v %v", o, err)
	}
	check(o, ErrNotOwner)
	// Stopping a UVM that belongs to a live process from elsewhere is refused.
	if err := o.Stop(ctx); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("stop by a non-owner: %v", err)
	}
	if err := o.Remove(ctx); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("remove of a UVM in use: %v", err)
	}
}

// TestHelperProcess is not a test: it is a stand-in process for the tests
// below (a fake QEMU, or a UVM owner), selected by LV_UVM_HELPER.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("LV_UVM_HELPER") {
	case "sleep":
		time.Sleep(10 * time.Minute)
		os.Exit(0)
	case "owner":
		cfg := Config{ID: "owned", Root: os.Getenv("LV_UVM_ROOT"), BootDir: os.Getenv("LV_UVM_BOOT"),
			Initrd: os.Getenv("LV_UVM_INITRD"), ScratchSize: 64 << 20, VPMemSlots: 4}
		u, err := Create(context.Background(), cfg)
		if err == nil {
			err = u.Start(context.Background())
		}
		fmt.Println("ready", err)
		time.Sleep(10 * time.Minute)
		os.Exit(0)
	}
}

// helper starts this test binary as a helper process.
func helper(t *testing.T, kind string, env []string, args ...string) *exec.Cmd {
	if len(args) > 0 {
		args = append([]string{"--"}, args...)
	}
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestHelperProcess$"}, args...)...)
	cmd.Env = append(append(os.Environ(), "LV_UVM_HELPER="+kind), env...)
	t.Cleanup(func() {
		if cmd.ProcessState == nil && cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// fakeVirtiofsd runs a process named virtiofsd logging to log, as the share
// controller starts them.
func fakeVirtiofsd(t *testing.T, log string) *exec.Cmd {
	bin := filepath.Join(t.TempDir(), "virtiofsd")
	if err := os.Symlink(os.Args[0], bin); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(log), 0o755)
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := helper(t, "sleep", nil)
	cmd.Path, cmd.Args[0] = bin, bin
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// killed waits for a child and reports whether it was killed.
func killed(cmd *exec.Cmd) bool {
	cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func TestGCReapsDeadAndHalfMadeUVMs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	// half: a create that died before recording anything, with a virtiofsd.
	vfsHalf := fakeVirtiofsd(t, filepath.Join(Dir(root, "half"), "shares", "virtiofsd-a.log"))
	// busy: a create in progress (its lock is held).
	os.MkdirAll(Dir(root, "busy"), 0o755)
	busy, ok, err := lockUVM(Dir(root, "busy"))
	if err != nil || !ok {
		t.Fatal(err)
	}
	defer busy.release()
	// orphan: a UVM whose owner died, with a QEMU stand-in (a process whose
	// command line names the UVM's QMP socket, like QEMU's).
	o, err := Create(ctx, plainConfig(t, root, "orphan"))
	if err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	dead.Run()
	qemu := helper(t, "sleep", nil, "-qmp", "unix:"+o.path("qmp.sock")+",server=on,wait=off")
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	o.state.Owner, o.state.Status, o.state.PID = &Owner{PID: dead.Process.Pid, Start: 1}, "running", qemu.Process.Pid
	o.save()
	o.Close()
	// kept: a long-lived UVM, created and never started; a virtiofsd in it
	// belongs to nothing.
	cfg := plainConfig(t, root, "kept")
	cfg.LongLived = true
	k, err := Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	vfsKept := fakeVirtiofsd(t, filepath.Join(Dir(root, "kept"), "shares", "virtiofsd-b.log"))

	sts, _ := List(root)
	for _, st := range sts {
		if st.Config.ID == "orphan" && (st.Status != "failed" || !strings.Contains(st.Error, "gone")) {
			t.Errorf("uvm ls of an orphan: %s %q", st.Status, st.Error)
		}
	}
	if got := len(Processes(root)); got != 3 {
		t.Fatalf("Processes found %d of the 3: %+v", got, Processes(root))
	}
	rep, err := GC(ctx, root, HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.Reaped)
	if !slices.Equal(rep.Reaped, []string{"half", "orphan"}) {
		t.Errorf("reaped %v, want half and orphan", rep.Reaped)
	}
	for _, c := range []*exec.Cmd{vfsHalf, qemu, vfsKept} {
		if !killed(c) {
			t.Errorf("%v not killed: %v", c.Args, c.ProcessState)
		}
	}
	for id, want := range map[string]bool{"half": false, "orphan": false, "busy": true, "kept": true} {
		if _, err := os.Stat(Dir(root, id)); (err == nil) != want {
			t.Errorf("%s: dir exists %v, want %v", id, err == nil, want)
		}
	}
	busy.release()
	k.state.Status = "stopped"
	k.Remove(ctx)
}

// A UVM that belongs to a process dies with it, however the process dies,
// and gc removes what is left.
func TestOwnedUVMDiesWithOwner(t *testing.T) {
	cfg := testConfig(t, "owned")
	root := cfg.Root
	owner := helper(t, "owner", []string{"LV_UVM_ROOT=" + root, "LV_UVM_BOOT=" + cfg.BootDir, "LV_UVM_INITRD=" + cfg.Initrd})
	out, _ := owner.StdoutPipe()
	owner.Stderr = os.Stderr
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	go io.Copy(io.Discard, out)
	if line != "ready <nil>\n" {
		t.Fatalf("owner: %q", line)
	}
	st, err := Load(root, "owned")
	if err != nil || st.Status != "running" || st.Owner == nil || st.Owner.PID != owner.Process.Pid {
		t.Fatalf("state %+v %v", st, err)
	}
	dir := Dir(root, "owned")
	if !alive(st.PID, dir) {
		t.Fatal("QEMU not running")
	}
	owner.Process.Signal(syscall.SIGKILL)
	owner.Wait()
	// The kernel kills QEMU (parent-death signal), no gc needed.
	deadline := time.Now().Add(30 * time.Second)
	for alive(st.PID, dir) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %d outlived its owner by 30 s", st.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep, err := GC(context.Background(), root, HostOptions{})
	if err != nil || !slices.Equal(rep.Reaped, []string{"owned"}) {
		t.Fatalf("gc: %+v %v", rep, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("gc left %s: %v", dir, err)
	}
	if ps := Processes(root); len(ps) != 0 {
		t.Fatalf("processes left: %+v", ps)
	}
}

// Reap takes down one dead UVM and its processes, and nothing else: not
// another dead UVM, not a template.
func TestReapOneUVM(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dead := exec.Command("true")
	dead.Run()
	orphan := func(id string) *exec.Cmd {
		u, err := Create(ctx, plainConfig(t, root, id))
		if err != nil {
			t.Fatal(err)
		}
		q := helper(t, "sleep", nil, "-qmp", "unix:"+u.path("qmp.sock")+",server=on,wait=off")
		if err := q.Start(); err != nil {
			t.Fatal(err)
		}
		u.state.Owner, u.state.Status, u.state.PID = &Owner{PID: dead.Process.Pid, Start: 1}, "running", q.Process.Pid
		u.save()
		u.Close()
		return q
	}
	q1, q2 := orphan("one"), orphan("two")
	defer func() { q2.Process.Kill(); q2.Wait() }()
	tpl := filepath.Join(root, "templates", "somekey")
	if err := os.MkdirAll(tpl, 0o755); err != nil {
		t.Fatal(err)
	}
	reaped, err := Reap(ctx, root, "one", HostOptions{})
	if err != nil || !reaped {
		t.Fatalf("Reap(one) = %v, %v", reaped, err)
	}
	if !killed(q1) {
		t.Errorf("one's QEMU not killed: %v", q1.ProcessState)
	}
	if _, err := os.Stat(Dir(root, "one")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("one's directory: %v", err)
	}
	if _, err := os.Stat(Dir(root, "two")); err != nil {
		t.Errorf("two was touched: %v", err)
	}
	if err := q2.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("two's QEMU was killed: %v", err)
	}
	if _, err := os.Stat(tpl); err != nil {
		t.Errorf("the template was touched: %v", err)
	}
	if _, err := Reap(ctx, root, "../x", HostOptions{}); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Reap of a bad id: %v", err)
	}
}
