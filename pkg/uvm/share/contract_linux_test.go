package share_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/attachtest/vmtest"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
	"github.com/layervisor/layervisor/pkg/uvm/share"
)

// guest mounts through the agent and counts unmounts (vmtest.Guest).
type guest struct{ *vmtest.Guest }

func (g guest) MountVirtiofs(ctx context.Context, tag string, ro bool, gp string) error {
	return g.A.MountVirtiofs(ctx, tag, ro, gp)
}

// host is the real QEMU host (virtiofsd + vhost-user-fs-pci) whose removal
// can be made to fail first; it remembers the tags it served.
type host struct {
	*share.QEMUHost
	*vmtest.Breaker
	mon  hotplug.Monitor
	mu   *sync.Mutex
	tags map[string]string // tag → host dir
}

func (h host) AddShare(ctx context.Context, tag, dir string, readOnly bool) error {
	if err := h.QEMUHost.AddShare(ctx, tag, dir, readOnly); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tags[tag] = dir
	return nil
}

func (h host) RemoveShare(ctx context.Context, tag string) error {
	if err := h.Try(); err != nil {
		return err
	}
	return h.QEMUHost.RemoveShare(ctx, tag)
}

// serving reports whether QEMU has the device of a tag serving dir, with
// its virtiofsd running.
func (h host) serving(t *testing.T, dir string) bool {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for tag, d := range h.tags {
		if d != dir {
			continue
		}
		var typ string
		err := h.mon.Execute(context.Background(), "qom-get",
			map[string]any{"path": "/machine/peripheral/vfs-" + tag, "property": "type"}, &typ)
		if err == nil && h.Daemons()[tag] != 0 {
			return true
		}
	}
	return false
}

// The release contract on a booted VM: real virtiofs shares, real guest
// mounts, a guest unmount that fails because the mount is busy.
func TestContractQEMU(t *testing.T) {
	if _, err := os.Stat(share.DefaultVirtiofsd()); err != nil {
		testutil.Unavailable(t, err.Error())
	}
	u := vmtest.Boot(t, 0)
	g := guest{&vmtest.Guest{A: u.Agent()}}
	state := t.TempDir()
	qh := share.NewQEMUHost(u.QMP(), pciports.New(u.Config().RootPorts), state, "")
	t.Cleanup(func() { qh.Close() })
	h := host{QEMUHost: qh, Breaker: &vmtest.Breaker{}, mon: u.QMP(), mu: &sync.Mutex{}, tags: map[string]string{}}
	c := share.New(h, g, state)
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		dir := vmtest.Tree(t)
		return attachtest.Subject{
			Attach:       func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, dir, true) },
			RefCount:     func() int { return c.RefCount(dir, true) },
			HostAttached: func(t *testing.T) bool { return h.serving(t, dir) },
			GuestMounted: g.Mounted,
			BreakUnmount: g.BreakUnmount,
			BreakRemove:  h.Break,
			Unmounts:     g.Unmounts,
			Removes:      h.Removes,
		}
	})
	// A guest that replaces its read-only mount of a share with a
	// read-write one still cannot write the host directory: the host serves
	// a read-only view.
	t.Run("read-only enforced by the host", func(t *testing.T) {
		ctx := context.Background()
		dir := vmtest.Tree(t)
		s, err := c.Attach(ctx, dir, true)
		if err != nil {
			t.Fatal(err)
		}
		a := u.Agent()
		if err := a.Unmount(ctx, s.GuestDir()); err != nil {
			t.Fatal(err)
		}
		if err := a.MountVirtiofs(ctx, s.Tag(), false, s.GuestDir()); err != nil {
			t.Fatalf("guest remount read-write: %v", err)
		}
		err = a.Mkdir(ctx, s.GuestDir()+"/written-by-guest")
		if err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("guest write through a read-write remount: %v, want a read-only file system error", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "written-by-guest")); err == nil {
			t.Error("the guest wrote into a read-only host directory")
		}
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if c.Active() != 0 || len(qh.Daemons()) != 0 {
		t.Fatalf("shares %d daemons %v left", c.Active(), qh.Daemons())
	}
}
