package uvm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/agent"
)

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
)

// testConfig returns a config whose initramfs is built once per test run.
func testConfig(t testing.TB, id string) Config {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "qemu-system-x86_64")
	boot, agent := testutil.NeedUVMKernel(t), testutil.GuestAgent(t)
	initrdOnce.Do(func() {
		dir, err := testutil.SharedDir("lv-initrd")
		if err != nil {
			initrdErr = err
			return
		}
		initrdPath = filepath.Join(dir, "initrd.img")
		initrdErr = BuildInitramfs(context.Background(), InitramfsOptions{BootDir: boot, Agent: agent, Out: initrdPath})
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return Config{ID: id, Root: t.TempDir(), BootDir: boot, Initrd: initrdPath, ScratchSize: 64 << 20, VPMemSlots: 4}
}

func start(t *testing.T, cfg Config) *UVM {
	t.Helper()
	ctx := context.Background()
	u, err := Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		u.Stop(context.Background())
		u.Remove(context.Background())
	})
	return u
}

func TestBootExecStop(t *testing.T) {
	u := start(t, testConfig(t, "t1"))
	ctx := context.Background()
	var out, errb bytes.Buffer
	code, err := u.Agent().Exec(ctx, agent.ExecRequest{Args: []string{"/init", "--version"}, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	// /init refuses to run as a second agent: a real exit code from the guest.
	if code != 2 || !strings.Contains(errb.String(), "PID 1") {
		t.Fatalf("exec: code %d stderr %q", code, errb.String())
	}
	if _, err := u.Agent().Exec(ctx, agent.ExecRequest{Args: []string{"nonexistent"}}); !agent.IsCode(err, agent.CodeExecNotFound) {
		t.Fatalf("exec of a missing command: %v", err)
	}
	if err := u.Agent().Mkdir(ctx, "/etc/evil"); !agent.IsCode(err, agent.CodeOutsideRoots) {
		t.Fatalf("mkdir outside roots: %v", err)
	}
	st, err := Load(u.cfg.Root, "t1")
	if err != nil || st.Status != "running" || st.PID == 0 || (st.Accel != "tcg" && st.Accel != "kvm") {
		t.Fatalf("state %+v %v", st, err)
	}
	pid := st.PID
	if err := u.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid, u.dir) {
		t.Fatal("QEMU still running after Stop")
	}
	if err := u.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := u.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := u.Remove(ctx); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := os.Stat(u.dir); !os.IsNotExist(err) {
		t.Fatal("state dir left after Remove")
	}
}

func TestQEMUKilled(t *testing.T) {
	u := start(t, testConfig(t, "t2"))
	if err := u.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !u.Failed() {
		if time.Now().After(deadline) {
			t.Fatal("UVM not marked failed after QEMU died")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := u.Agent().Mkdir(context.Background(), "/run/c/x"); !errors.Is(err, agent.ErrDisconnected) {
		t.Fatalf("call after QEMU died: %v", err)
	}
	// Keep-on-failure keeps the state of a failed UVM only.
	u.SetHostOptions(HostOptions{KeepOnFailure: true})
	u.Stop(context.Background())
	u.mu.Lock()
	u.state.Status = "failed"
	u.mu.Unlock()
	if err := u.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(u.dir, "debug")); err != nil {
		t.Fatal("failed UVM's state not kept with keep-on-failure")
	}
}

func TestBadConfig(t *testing.T) {
	ctx := context.Background()
	for _, id := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("x", 65)} {
		if _, err := Create(ctx, Config{ID: id, Root: t.TempDir()}); !errors.Is(err, ErrInvalidID) {
			t.Errorf("id %q: %v", id, err)
		}
	}
	if _, err := Create(ctx, Config{ID: "x", Root: t.TempDir(), SCSIControllers: 5}); err == nil || !strings.Contains(err.Error(), "1 to 4") {
		t.Errorf("5 SCSI controllers: %v", err)
	}
	cfg := testConfig(t, "t3")
	cfg.BootDir = t.TempDir()
	u, err := Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx); err == nil || !strings.Contains(err.Error(), "scripts/deps.sh") {
		t.Fatalf("missing kernel: %v", err)
	}
	u.Remove(ctx)
}

// An init that never starts the agent: Start gives up at its deadline with
// the console's tail, and kills QEMU.
func TestAgentNeverAnswers(t *testing.T) {
	cfg := testConfig(t, "t4")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n\tfmt.Println(\"hanging init here\")\n\tfor {\n\t\ttime.Sleep(time.Hour)\n\t}\n}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hang\n"), 0o644)
	build := exec.Command("go", "build", "-o", "init", ".")
	build.Dir, build.Env = dir, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	cfg.Initrd = filepath.Join(dir, "hang.img")
	if err := BuildInitramfs(context.Background(), InitramfsOptions{BootDir: cfg.BootDir, Agent: filepath.Join(dir, "init"), Out: cfg.Initrd}); err != nil {
		t.Fatal(err)
	}
	// Give up once the init has spoken (a fixed boot timeout fails on a
	// loaded machine before the guest gets that far); the timeout only bounds it.
	cfg.BootTimeout = 5 * time.Minute
	u, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(u.path("debug/console.log")); bytes.Contains(b, []byte("hanging init here")) {
				cancel()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	err = u.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "did not come up") || !strings.Contains(err.Error(), "hanging init here") ||
		!strings.Contains(err.Error(), "-accel "+accelOption(accel(cfg.Host.Accel))) {
		t.Fatalf("want a boot error with the console tail, got %v", err)
	}
	if !u.Failed() {
		t.Fatal("UVM not marked failed")
	}
	if alive(u.State().PID, u.dir) {
		t.Fatal("QEMU left running after a failed start")
	}
	u.Remove(context.Background())
}

func TestPickAccel(t *testing.T) {
	for _, tc := range []struct {
		modules []string
		opens   bool
		want    string
	}{
		{[]string{"/sys/module/kvm", "/sys/module/kvm_intel"}, true, "kvm"},
		{[]string{"/sys/module/kvm", "/sys/module/kvm_amd"}, true, "kvm"},
		{[]string{"/sys/module/kvm", "/sys/module/kvm_intel"}, false, "tcg"},
		{[]string{"/sys/module/kvm", "/sys/module/kvm_pvm"}, true, "tcg"}, // paravirtual /dev/kvm
		{nil, false, "tcg"},
	} {
		exists := func(p string) bool { return slices.Contains(tc.modules, p) }
		if got := pickAccel(exists, func() bool { return tc.opens }); got != tc.want {
			t.Errorf("modules %v, opens %v: %s, want %s", tc.modules, tc.opens, got, tc.want)
		}
	}
}

func TestAccelOption(t *testing.T) {
	if got := accelOption("tcg"); got != "tcg,thread=single,tb-size=32" {
		t.Errorf("tcg: %s", got)
	}
	if got := accelOption("kvm"); got != "kvm" {
		t.Errorf("kvm: %s", got)
	}
}
