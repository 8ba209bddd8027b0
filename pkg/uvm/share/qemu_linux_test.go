package share

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug/hotplugtest"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// The QEMU adapter against a real (paused) QEMU: virtiofsd starts, QEMU
// connects to it and the device is plugged. Unplugging needs a running
// guest; that half is covered by the integration tests.
func TestQEMUHostAddShare(t *testing.T) {
	if _, err := os.Stat(DefaultVirtiofsd()); err != nil {
		testutil.Unavailable(t, err.Error())
	}
	q := hotplugtest.Start(t)
	ctx := context.Background()
	ports := pciports.New(4)
	state := t.TempDir()
	h := NewQEMUHost(q, ports, state, "")
	defer h.Close()

	// A missing source: virtiofsd exits, the error says why, nothing is left.
	err := h.AddShare(ctx, "s0", filepath.Join(t.TempDir(), "missing"), false)
	if err == nil || !strings.Contains(err.Error(), "virtiofsd exited") {
		t.Fatalf("missing source: %v", err)
	}
	t.Logf("missing source: %v", err)
	if _, err := os.Stat(filepath.Join(state, "virtiofsd-s0.sock")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("failed share left its socket: %v", err)
	}
	if ports.InUse() != 0 || len(h.Daemons()) != 0 {
		t.Fatal("failed share left a port or daemon")
	}
	bad := NewQEMUHost(q, ports, state, "/nonexistent/virtiofsd")
	if err := bad.AddShare(ctx, "s1", t.TempDir(), false); err == nil || !strings.Contains(err.Error(), "install") {
		t.Fatalf("missing virtiofsd: %v", err)
	}

	// A missing source shared read-only: the view cannot be made, nothing stays.
	if err := h.AddShare(ctx, "s3", filepath.Join(t.TempDir(), "missing"), true); err == nil {
		t.Fatal("read-only share of a missing directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(state, "ro-s3")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("failed read-only share left its view: %v", err)
	}

	// Read-only: virtiofsd serves a read-only bind mount of the directory.
	src := t.TempDir()
	if err := h.AddShare(ctx, "s2", src, true); err != nil {
		t.Fatal(err)
	}
	view := filepath.Join(state, "ro-s2")
	if err := os.WriteFile(filepath.Join(view, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through the served view: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(src, "y"), nil, 0o644); err != nil {
		t.Fatalf("the host directory itself must stay writable: %v", err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", h.Daemons()["s2"]))
	if !strings.Contains(string(cmdline), "\x00-o\x00source="+view+"\x00") && !strings.Contains(string(cmdline), "\x00--shared-dir="+view+"\x00") {
		t.Fatalf("virtiofsd does not serve the view: %q", cmdline)
	}
	pid := h.Daemons()["s2"]
	if pid == 0 || !alive(pid) || ports.InUse() != 1 {
		t.Fatalf("daemon %d alive %v ports %d", pid, alive(pid), ports.InUse())
	}
	var path string
	if err := q.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/vfs-s2", "property": "type"}, &path); err != nil {
		t.Fatal(err)
	}
	if path != "vhost-user-fs-pci" {
		t.Fatalf("device type %q", path)
	}
	// QEMU dies: Close stops the daemon, no process is leaked.
	q.Kill()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("virtiofsd %d still running", pid)
	}
	if _, err := os.Stat(view); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the read-only view outlived its share: %v", err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), view) {
		t.Fatal("the read-only view is still mounted")
	}
}

// A daemon slow to start still serves: QEMU's connect queues on the socket
// we listen on, and the vhost-user handshake waits for the daemon. (With
// virtiofsd making its own socket, a connect between its bind and listen
// was refused.)
func TestQEMUHostSlowDaemon(t *testing.T) {
	if _, err := os.Stat(DefaultVirtiofsd()); err != nil {
		testutil.Unavailable(t, err.Error())
	}
	slow := filepath.Join(t.TempDir(), "slow-virtiofsd")
	script := "#!/bin/sh\nsleep 0.5\nexec " + DefaultVirtiofsd() + " \"$@\"\n"
	if err := os.WriteFile(slow, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	q := hotplugtest.Start(t)
	h := NewQEMUHost(q, pciports.New(2), t.TempDir(), slow)
	defer h.Close()
	if err := h.AddShare(context.Background(), "s0", t.TempDir(), false); err != nil {
		t.Fatal(err)
	}
	if len(h.Daemons()) != 1 {
		t.Fatal("no daemon recorded")
	}
}
