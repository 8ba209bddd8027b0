package uvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/qmp"
)

// floodFirmware is a 64 KiB x86 firmware image whose reset vector writes
// 'x' to the first serial port forever: a guest that prints without end.
func floodFirmware(t *testing.T) string {
	t.Helper()
	b := bytes.Repeat([]byte{0xff}, 64<<10)
	// At the reset vector (real mode, CS:IP = F000:FFF0):
	// mov dx, 0x3f8; mov al, 'x'; l: out dx, al; jmp l
	copy(b[0xfff0:], []byte{0xba, 0xf8, 0x03, 0xb0, 'x', 0xee, 0xeb, 0xfd})
	p := filepath.Join(t.TempDir(), "flood.bin")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// bare is a QEMU started by a test.
type bare struct {
	cmd    *exec.Cmd
	q      *qmp.Client
	exited chan struct{} // closed once cmd.Wait returned
}

// bareQEMU starts QEMU with args and a QMP socket, and kills it at the end
// of the test.
func bareQEMU(t *testing.T, args ...string) bare {
	t.Helper()
	bin := testutil.NeedTool(t, "qemu-system-x86_64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, append(args, "-qmp", "unix:"+sock+",server=on,wait=off")...)
	stderr := newHeadTail(stderrKeep)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	q, err := dialRetry(ctx, sock)
	if err != nil {
		t.Fatalf("QMP: %v (QEMU: %s)", err, stderr.String())
	}
	t.Cleanup(func() { q.Close() })
	return bare{cmd, q, exited}
}

func seccompMode(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("pid %d: no Seccomp line in its status", pid)
	return ""
}

// A guest that prints without end, on a UVM's own QEMU command line: QEMU
// holds at most its ring of the console, and what the host drains of it
// leaves at most the cap on disk (console.log plus console.log.1), however
// much the guest prints. QEMU runs under its seccomp filter.
func TestConsoleFloodBounded(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "debug"), 0o750)
	cfg := Config{ID: "flood", Root: dir, BootDir: dir}
	cfg.defaults()
	u := &UVM{cfg: cfg, dir: dir}
	// A restored UVM's command line has no kernel: the firmware is the guest.
	args := append(u.qemuArgs("tcg", "", true), "-bios", floodFirmware(t))
	b := bareQEMU(t, args...)
	q := b.q
	if m := seccompMode(t, b.cmd.Process.Pid); m != "2" {
		t.Errorf("QEMU's seccomp mode %s, want 2 (filter)", m)
	}
	d, err := startConsoleDrain(q, u.path(consoleLog))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	// Drain (besides the drain's own ticks) until the guest has printed
	// twice what the disk may hold.
	var drained int64
	for drained < 2*2*consoleLogMax {
		if err := d.drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		drained = d.log.written
		d.mu.Unlock()
		var onDisk int64
		for _, p := range []string{consoleLog, consoleLog + ".1"} {
			if st, err := os.Stat(u.path(p)); err == nil {
				if st.Size() > consoleLogMax {
					t.Fatalf("%s: %d bytes, cap %d", p, st.Size(), consoleLogMax)
				}
				onDisk += st.Size()
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		if onDisk > 2*consoleLogMax {
			t.Fatalf("%d bytes of console on disk, cap %d", onDisk, 2*consoleLogMax)
		}
	}
	log, err := os.ReadFile(u.path(consoleLog))
	if err != nil || len(log) == 0 || len(bytes.Trim(log, "x")) != 0 {
		t.Fatalf("console.log: %d bytes, not the guest's output (%v)", len(log), err)
	}
	t.Logf("the guest printed %d bytes; on disk: at most %d", drained, 2*consoleLogMax)
	// QEMU's own memory for the console is its ring: what was not drained
	// in time is gone, not queued.
	var s string
	if err := q.Execute(context.Background(), "ringbuf-read", map[string]any{"device": consoleChardev, "size": 4 * consoleRingSize, "format": "base64"}, &s); err != nil {
		t.Fatal(err)
	}
	if n := len(s) / 4 * 3; n > consoleRingSize+3 {
		t.Fatalf("the console ring held %d bytes, its size is %d", n, consoleRingSize)
	}
}

// QEMU's exec: migration (how template.go saves and loads templates)
// starts a shell, which spawn=deny forbids: QEMU dies of SIGSYS. The same
// migration through a unix socket (migrateToFile, migrateFromFile) works
// under the whole filter, spawn=deny included.
func TestMigrateUnderSpawnDeny(t *testing.T) {
	sandbox := qemuSandbox + ",spawn=deny"
	base := []string{"-M", "q35", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config", "-sandbox", sandbox}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	spawner := bareQEMU(t, append(base, "-S")...)
	spawner.q.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil)
	<-spawner.exited
	if ws, ok := spawner.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGSYS {
		t.Fatalf("QEMU after an exec: migration under spawn=deny: %v, want killed by SIGSYS", spawner.cmd.ProcessState)
	}

	out := bareQEMU(t, append(base, "-S")...)
	state := filepath.Join(t.TempDir(), "state")
	if err := migrateToFile(ctx, out.q, state); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(state); err != nil || st.Size() == 0 {
		t.Fatalf("state file: %v", err)
	}
	in := bareQEMU(t, append(base, "-incoming", "defer")...)
	if err := migrateFromFile(ctx, in.q, state); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := in.q.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" && st.Status != "paused" {
		t.Fatalf("incoming QEMU is %s after the migration", st.Status)
	}
	// A damaged stream is an error naming the file.
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("not a migration stream"), 0o600)
	if err := migrateFromFile(ctx, bareQEMU(t, append(base, "-incoming", "defer")...).q, bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("damaged stream: %v", err)
	}
}

// A booted UVM: QEMU runs under its seccomp filter (the options of
// qemuSandbox on its command line), and the console log is there and
// within its cap, while it runs and after it stopped.
func TestUVMSandboxedAndConsoleCapped(t *testing.T) {
	u := start(t, tplConfig(t, "hostile"))
	pid := u.State().PID
	if m := seccompMode(t, pid); m != "2" {
		t.Errorf("QEMU's seccomp mode %s, want 2 (filter)", m)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(cmdline, []byte("\x00-sandbox\x00"+qemuSandbox+"\x00")) {
		t.Errorf("QEMU's command line has no -sandbox %s: %q", qemuSandbox, cmdline)
	}
	capped := func(when string) {
		t.Helper()
		st, err := os.Stat(u.path(consoleLog))
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if st.Size() > consoleLogMax {
			t.Fatalf("%s: console.log has %d bytes, cap %d", when, st.Size(), consoleLogMax)
		}
	}
	capped("running")
	if err := u.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	capped("stopped")
}
