// Package vmtest boots a real utility VM for the attachment controllers'
// contract tests (internal/attachtest.Contract) and gives them what they
// observe and break in it: files on the guest's mounts, and a mount made
// busy so that the guest's unmount fails for real.
//
// It is separate from attachtest because it imports pkg/uvm, which imports
// the controllers whose in-package tests use attachtest.
package vmtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// Marker is a file, and Busy a directory, in every tree Tree makes. A bind
// mount over Busy keeps the guest mount busy.
const (
	Marker = "marker"
	Busy   = "busy"
)

// ErrInjected is what the tests' breakable wrappers fail with.
var ErrInjected = errors.New("injected failure")

// Boot boots a UVM for the test (one per test binary: call it once and
// share the VM between subtests) and stops it when the test ends.
func Boot(t *testing.T, vpmemSlots int) *uvm.UVM {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "qemu-system-x86_64")
	boot := testutil.NeedUVMKernel(t)
	ctx := context.Background()
	root := t.TempDir()
	initrd := filepath.Join(root, "initrd.img")
	agent := filepath.Join(root, uvm.AgentName)
	if err := testutil.BuildGuestAgent(agent); err != nil {
		t.Fatal(err)
	}
	if err := uvm.BuildInitramfs(ctx, uvm.InitramfsOptions{BootDir: boot, Agent: agent, Out: initrd}); err != nil {
		t.Fatal(err)
	}
	u, err := uvm.Create(ctx, uvm.Config{ID: "contract", Root: root, BootDir: boot, Initrd: initrd,
		ScratchSize: 64 << 20, VPMemSlots: vpmemSlots})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx); err != nil {
		u.Remove(ctx)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		u.Stop(context.Background())
		u.Remove(context.Background())
	})
	return u
}

// Tree makes a directory holding Marker and Busy/keep (so that the
// agent's removal of an unmounted mount point never empties it).
func Tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, Busy, "keep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, Marker), []byte("contract\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// LayerImage makes a 4 MiB ext4 image of Tree with a fixed VHD footer, as
// layer images are.
func LayerImage(t *testing.T) string {
	t.Helper()
	testutil.NeedTool(t, "mkfs.ext4")
	p := filepath.Join(t.TempDir(), "layer.vhd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", Tree(t), p)
	if err := vhd.AppendFixedFooter(f); err != nil {
		t.Fatal(err)
	}
	return p
}

// Guest observes and breaks the guest's mounts through its agent, and
// counts the unmounts the controller asks for.
type Guest struct {
	A        *agent.Client
	unmounts atomic.Int64
}

// Unmount counts, then asks the agent.
func (g *Guest) Unmount(ctx context.Context, p string) error {
	g.unmounts.Add(1)
	return g.A.Unmount(ctx, p)
}

// Unmounts is how many unmounts were asked for.
func (g *Guest) Unmounts() int { return int(g.unmounts.Load()) }

// Mounted reports whether the guest shows Marker under guestPath: the tree
// is mounted there.
func (g *Guest) Mounted(t *testing.T, guestPath string) bool {
	t.Helper()
	names, err := g.A.List(context.Background(), guestPath)
	var aerr *agent.Error
	if errors.As(err, &aerr) && aerr.Code == agent.CodeNotFound {
		return false
	}
	if err != nil {
		t.Fatalf("list %s in the guest: %v", guestPath, err)
	}
	return slices.Contains(names, Marker)
}

// BreakUnmount bind-mounts guestPath/Busy onto itself, so that unmounting
// guestPath fails (EBUSY) until fix removes the bind mount.
func (g *Guest) BreakUnmount(t *testing.T, guestPath string) (fix func()) {
	t.Helper()
	ctx := context.Background()
	busy := guestPath + "/" + Busy
	if err := g.A.BindMount(ctx, busy, busy, true); err != nil {
		t.Fatalf("bind %s over itself in the guest: %v", busy, err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := g.A.Unmount(ctx, busy); err != nil {
				t.Errorf("unmount %s in the guest: %v", busy, err)
			}
		})
	}
}

// Breaker makes a host's removal fail on demand and counts removals; the
// controllers' test adapters embed it.
type Breaker struct {
	broken  atomic.Bool
	removes atomic.Int64
}

// Try counts a removal and says whether it must fail.
func (b *Breaker) Try() error {
	b.removes.Add(1)
	if b.broken.Load() {
		return ErrInjected
	}
	return nil
}

// Break makes removals fail until fix.
func (b *Breaker) Break(*testing.T) (fix func()) {
	b.broken.Store(true)
	return func() { b.broken.Store(false) }
}

// Removes is how many removals were attempted.
func (b *Breaker) Removes() int { return int(b.removes.Load()) }
