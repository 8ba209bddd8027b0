package scsi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/diskimage"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

var errInjected = errors.New("injected failure")

// fakeHost is a VMM that checks it is never asked to double-add or remove
// a missing disk. Its hooks inject failures or block.
type fakeHost struct {
	*attachtest.Table[Slot, string]
}

func (h fakeHost) AddDisk(ctx context.Context, s Slot, p string, f diskformat.Format, ro bool) error {
	return h.Add(s, p)
}
func (h fakeHost) RemoveDisk(ctx context.Context, s Slot) error { return h.Remove(s) }

// fakeGuest keeps the guest's mount table, which fails the test on a double
// mount or a stray unmount.
type fakeGuest struct {
	*attachtest.Table[string, Slot]
}

func (g fakeGuest) MountSCSI(ctx context.Context, s Slot, part int, ro bool, fsType, gp string) error {
	return g.Add(gp, s)
}
func (g fakeGuest) Unmount(ctx context.Context, gp string) error { return g.Remove(gp) }

func setup(t *testing.T, controllers int) (*Controller, *fakeHost, *fakeGuest) {
	t.Helper()
	h := &fakeHost{attachtest.New[Slot, string](t, "SCSI disk")}
	g := &fakeGuest{attachtest.New[string, Slot](t, "guest mount")}
	c, err := New(h, g, controllers)
	if err != nil {
		t.Fatal(err)
	}
	return c, h, g
}

// files makes n empty disk files.
func files(t *testing.T, n int) []string {
	t.Helper()
	dir := t.TempDir()
	out := make([]string, n)
	for i := range out {
		out[i] = filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if err := os.WriteFile(out[i], nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

var mounted = Options{Format: diskformat.Raw, MountInGuest: true}

func TestAttachDedupesAndRefCounts(t *testing.T) {
	ctx := context.Background()
	c, h, g := setup(t, 1)
	p := files(t, 1)[0]
	m1, err := c.Attach(ctx, p, mounted)
	if err != nil {
		t.Fatal(err)
	}
	// A symlink to the same file is the same disk.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	m2, err := c.Attach(ctx, link, mounted)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Slot() != m2.Slot() || m1.GuestPath() != m2.GuestPath() {
		t.Fatalf("second attach got %s %s, first %s %s", m2.Slot(), m2.GuestPath(), m1.Slot(), m1.GuestPath())
	}
	if m1.GuestPath() != guestpath.SCSIMount(0) {
		t.Fatalf("guest path %q", m1.GuestPath())
	}
	if n := c.RefCount(p); n != 2 {
		t.Fatalf("RefCount = %d, want 2", n)
	}
	if _, adds, _ := h.Counts(); adds != 1 {
		t.Fatalf("AddDisk called %d times, want 1", adds)
	}
	if err := m1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := h.Counts(); d != 1 || g.Count() != 1 || c.RefCount(p) != 1 {
		t.Fatalf("after one release: disks %d mounts %d refs %d", d, g.Count(), c.RefCount(p))
	}
	if err := m1.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("double release: %v", err)
	}
	if err := m2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _, rm := h.Counts(); d != 0 || rm != 1 || g.Count() != 0 || c.Attached() != 0 {
		t.Fatalf("after last release: disks %d removes %d mounts %d attached %d", d, rm, g.Count(), c.Attached())
	}
	// Re-attach gets a fresh guest path from the counter.
	m3, err := c.Attach(ctx, p, mounted)
	if err != nil {
		t.Fatal(err)
	}
	if m3.GuestPath() != guestpath.SCSIMount(1) || m3.Slot() != (Slot{0, 0}) {
		t.Fatalf("re-attach: %s %s", m3.GuestPath(), m3.Slot())
	}
	if err := m3.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSlotsLowestFirstAndExhaustion(t *testing.T) {
	ctx := context.Background()
	c, h, _ := setup(t, 2)
	ps := files(t, 2*LUNsPerController+1)
	ms := make([]*Mount, 0, len(ps))
	for i, p := range ps[:2*LUNsPerController] {
		m, err := c.Attach(ctx, p, Options{Format: diskformat.Raw, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		want := Slot{i / LUNsPerController, i % LUNsPerController}
		if m.Slot() != want {
			t.Fatalf("disk %d at %s, want %s", i, m.Slot(), want)
		}
		if m.GuestPath() != "" {
			t.Fatalf("attach without guest mount has guest path %q", m.GuestPath())
		}
		ms = append(ms, m)
	}
	last := ps[len(ps)-1]
	if _, err := c.Attach(ctx, last, Options{Format: diskformat.Raw}); !errors.Is(err, ErrNoFreeSlot) {
		t.Fatalf("attach with all slots taken: %v", err)
	}
	if err := ms[5].Release(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := c.Attach(ctx, last, Options{Format: diskformat.Raw})
	if err != nil {
		t.Fatal(err)
	}
	if m.Slot() != (Slot{0, 5}) {
		t.Fatalf("after freeing 0:5 got %s", m.Slot())
	}
	ms[5] = m
	for _, m := range ms {
		if err := m.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if d, a, r := h.Counts(); d != 0 || a != r {
		t.Fatalf("leftover disks %d (adds %d removes %d)", d, a, r)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	c, h, _ := setup(t, 1)
	p := files(t, 1)[0]
	if _, err := c.Attach(ctx, filepath.Join(t.TempDir(), "missing.vhd"), mounted); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := c.Attach(ctx, "", mounted); err == nil {
		t.Fatal("empty path accepted")
	}
	if _, err := c.Attach(ctx, t.TempDir(), mounted); err == nil {
		t.Fatal("directory accepted as a disk")
	}
	if _, err := c.Attach(ctx, p, Options{Partition: -1}); err == nil {
		t.Fatal("negative partition accepted")
	}
	for _, f := range []diskformat.Format{"", "VHD", diskformat.VHD} {
		if _, err := c.Attach(ctx, p, Options{Format: f, MountInGuest: true}); err == nil || !strings.Contains(err.Error(), p) {
			t.Fatalf("format %q: %v", f, err)
		}
	}
	if _, err := New(h, nil, 0); err == nil {
		t.Fatal("zero controllers accepted")
	}
	m, err := c.Attach(ctx, p, mounted)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach(ctx, p, Options{Format: diskformat.Raw, MountInGuest: true, ReadOnly: true}); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting attach: %v", err)
	}
	if c.RefCount(p) != 1 {
		t.Fatalf("conflict changed the ref-count to %d", c.RefCount(p))
	}
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if d, a, _ := h.Counts(); d != 0 || a != 1 {
		t.Fatalf("disks %d adds %d", d, a)
	}
}

func TestFailureInjection(t *testing.T) {
	ctx := context.Background()
	t.Run("add fails", func(t *testing.T) {
		c, h, g := setup(t, 1)
		h.AddHook = func(Slot) error { return errInjected }
		p := files(t, 1)[0]
		if _, err := c.Attach(ctx, p, mounted); !errors.Is(err, errInjected) {
			t.Fatalf("got %v", err)
		}
		if c.Attached() != 0 || g.Count() != 0 || c.RefCount(p) != 0 {
			t.Fatal("failed add left state behind")
		}
		h.AddHook = nil
		m, err := c.Attach(ctx, p, mounted)
		if err != nil || m.Slot() != (Slot{0, 0}) {
			t.Fatalf("retry: %v %v", m, err)
		}
		_ = m.Release(ctx)
	})
	t.Run("guest mount fails, disk detached again", func(t *testing.T) {
		c, h, g := setup(t, 1)
		g.AddHook = func(string) error { return errInjected }
		p := files(t, 1)[0]
		if _, err := c.Attach(ctx, p, mounted); !errors.Is(err, errInjected) {
			t.Fatalf("got %v", err)
		}
		if d, a, r := h.Counts(); d != 0 || a != 1 || r != 1 || c.Attached() != 0 {
			t.Fatalf("disks %d adds %d removes %d attached %d", d, a, r, c.Attached())
		}
	})
	t.Run("guest mount and rollback fail, slot retired", func(t *testing.T) {
		c, h, g := setup(t, 1)
		g.AddHook = func(string) error { return errInjected }
		rmErr := errors.New("remove failed")
		h.RemoveHook = func(Slot) error { return rmErr }
		ps := files(t, 2)
		_, err := c.Attach(ctx, ps[0], mounted)
		if !errors.Is(err, errInjected) || !errors.Is(err, rmErr) {
			t.Fatalf("want both errors joined, got %v", err)
		}
		g.AddHook, h.RemoveHook = nil, nil
		m, err := c.Attach(ctx, ps[1], mounted)
		if err != nil {
			t.Fatal(err)
		}
		if m.Slot() != (Slot{0, 1}) {
			t.Fatalf("retired slot reused: %s", m.Slot())
		}
		if c.Attached() != 2 {
			t.Fatalf("Attached = %d, want 2 (one retired)", c.Attached())
		}
		_ = m.Release(ctx)
	})
	t.Run("unmount fails: disk stays attached and mounted, retry finishes", func(t *testing.T) {
		c, h, g := setup(t, 1)
		p := files(t, 1)[0]
		m, err := c.Attach(ctx, p, mounted)
		if err != nil {
			t.Fatal(err)
		}
		fix := g.BreakRemove(func(string) bool { return true }, errInjected)
		if err := m.Release(ctx); !errors.Is(err, errInjected) {
			t.Fatalf("got %v", err)
		}
		if d, _, _ := h.Counts(); d != 1 || h.RemoveTries() != 0 || g.Count() != 1 || c.RefCount(p) != 1 || c.Attached() != 1 {
			t.Fatalf("after failed unmount: disks %d remove tries %d mounts %d refs %d", d, h.RemoveTries(), g.Count(), c.RefCount(p))
		}
		fix()
		if err := m.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if d, _, _ := h.Counts(); d != 0 || g.Count() != 0 || c.Attached() != 0 || c.RefCount(p) != 0 {
			t.Fatalf("after retry: disks %d mounts %d attached %d", d, g.Count(), c.Attached())
		}
	})
	t.Run("remove fails: slot kept, retry only removes", func(t *testing.T) {
		c, h, g := setup(t, 1)
		ps := files(t, 2)
		m, err := c.Attach(ctx, ps[0], mounted)
		if err != nil {
			t.Fatal(err)
		}
		rmErr := errors.New("remove failed")
		fix := h.BreakRemove(func(Slot) bool { return true }, rmErr)
		if err := m.Release(ctx); !errors.Is(err, rmErr) {
			t.Fatalf("got %v", err)
		}
		fix()
		if c.RefCount(ps[0]) != 1 || g.Count() != 0 {
			t.Fatalf("refs %d mounts %d", c.RefCount(ps[0]), g.Count())
		}
		m2, err := c.Attach(ctx, ps[1], mounted)
		if err != nil || m2.Slot() != (Slot{0, 1}) {
			t.Fatalf("slot of a disk not yet removed reused: %v %v", m2, err)
		}
		if err := m.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if g.RemoveTries() != 1 || h.RemoveTries() != 2 || c.Attached() != 1 {
			t.Fatalf("unmounts %d removes %d attached %d", g.RemoveTries(), h.RemoveTries(), c.Attached())
		}
		if err := m2.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConcurrentSamePath(t *testing.T) {
	ctx := context.Background()
	c, h, g := setup(t, 1)
	gate := make(chan struct{})
	h.AddHook = func(Slot) error { <-gate; return nil }
	p := files(t, 1)[0]
	const n = 16
	ms := make(chan *Mount, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := c.Attach(ctx, p, mounted)
			if err != nil {
				errs <- err
				return
			}
			ms <- m
		}()
	}
	time.Sleep(10 * time.Millisecond) // let the callers pile up on the in-flight attach
	close(gate)
	wg.Wait()
	close(ms)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, a, _ := h.Counts(); a != 1 {
		t.Fatalf("AddDisk called %d times for one path", a)
	}
	if c.RefCount(p) != n {
		t.Fatalf("RefCount = %d, want %d", c.RefCount(p), n)
	}
	for m := range ms {
		wg.Add(1)
		go func(m *Mount) {
			defer wg.Done()
			if err := m.Release(ctx); err != nil {
				t.Error(err)
			}
		}(m)
	}
	wg.Wait()
	if d, _, r := h.Counts(); d != 0 || r != 1 || g.Count() != 0 {
		t.Fatalf("after releases: disks %d removes %d mounts %d", d, r, g.Count())
	}
}

func TestConcurrentDifferentPathsChurn(t *testing.T) {
	ctx := context.Background()
	c, h, g := setup(t, 1)
	ps := files(t, 8)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				p := ps[(w+i)%len(ps)]
				m, err := c.Attach(ctx, p, mounted)
				if err != nil {
					t.Error(err)
					return
				}
				if err := m.Release(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	d, a, r := h.Counts()
	if d != 0 || a != r || g.Count() != 0 || c.Attached() != 0 {
		t.Fatalf("after churn: disks %d adds %d removes %d mounts %d attached %d", d, a, r, g.Count(), c.Attached())
	}
}

func TestWaitersShareFailedAttach(t *testing.T) {
	ctx := context.Background()
	c, h, _ := setup(t, 1)
	gate := make(chan struct{})
	var once sync.Once
	h.AddHook = func(Slot) error {
		<-gate
		var err error
		once.Do(func() { err = errInjected })
		return err
	}
	p := files(t, 1)[0]
	const n = 6
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			m, err := c.Attach(ctx, p, mounted)
			if err == nil {
				err = m.Release(ctx)
			}
			errs <- err
		}()
	}
	time.Sleep(10 * time.Millisecond)
	close(gate)
	failed := 0
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			if !errors.Is(err, errInjected) {
				t.Fatalf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("nobody saw the injected failure")
	}
	if d, a, r := h.Counts(); d != 0 || a != r {
		t.Fatalf("disks %d adds %d removes %d", d, a, r)
	}
}

func TestAttachWaitsForDetach(t *testing.T) {
	ctx := context.Background()
	c, h, _ := setup(t, 1)
	p := files(t, 1)[0]
	m, err := c.Attach(ctx, p, mounted)
	if err != nil {
		t.Fatal(err)
	}
	entered, gate := make(chan struct{}), make(chan struct{})
	h.RemoveHook = func(Slot) error { close(entered); <-gate; return nil }
	relErr := make(chan error)
	go func() { relErr <- m.Release(ctx) }()
	<-entered
	// The path is being detached: even other options must wait, not conflict.
	got := make(chan *Mount)
	go func() {
		m2, err := c.Attach(ctx, p, Options{Format: diskformat.Raw, MountInGuest: true, ReadOnly: true})
		if err != nil {
			t.Error(err)
		}
		got <- m2
	}()
	// A cancelled waiter gives up with the context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Attach(cctx, p, mounted); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	close(gate)
	if err := <-relErr; err != nil {
		t.Fatal(err)
	}
	h.RemoveHook = nil
	m2 := <-got
	if m2 == nil {
		t.FailNow()
	}
	if _, a, r := h.Counts(); a != 2 || r != 1 {
		t.Fatalf("adds %d removes %d, want 2 and 1", a, r)
	}
	if err := m2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// The format QEMU is told is the one given, whatever the file holds: a
// raw disk into which the guest wrote a VHDX header or a VHD footer is still
// opened raw.
func TestBlockdevFormatGivenNotProbed(t *testing.T) {
	dir := t.TempDir()
	vhdxFile := filepath.Join(dir, "disk.vhdx")
	if err := diskimage.Create(vhdxFile, 4<<20, diskimage.CreateOptions{Format: diskformat.VHDX}); err != nil {
		t.Fatal(err)
	}
	fixed := filepath.Join(dir, "layer.vhd")
	if err := diskimage.Create(fixed, 4<<20, diskimage.CreateOptions{Format: diskformat.VHD, Type: vhdx.Fixed}); err != nil {
		t.Fatal(err)
	}
	tiny := filepath.Join(dir, "tiny")
	if err := os.WriteFile(tiny, make([]byte, 512), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		format diskformat.Format
		driver string
		size   any
	}{
		{vhdxFile, diskformat.Raw, "raw", nil}, // VHDX content, recorded raw
		{fixed, diskformat.Raw, "raw", nil},    // VHD footer, recorded raw: the whole file
		{vhdxFile, diskformat.VHDX, "vhdx", nil},
		{fixed, diskformat.VHDFixed, "raw", int64(4 << 20)},
		{fixed, diskformat.VHDDynamic, "vpc", nil},
		{tiny, diskformat.QCOW2, "qcow2", nil},
	} {
		args, err := BlockdevArgs("n", tc.path, tc.format, true)
		if err != nil {
			t.Fatal(err)
		}
		if args["driver"] != tc.driver || args["size"] != tc.size {
			t.Errorf("%s as %s: driver %v size %v, want %s %v", tc.path, tc.format, args["driver"], args["size"], tc.driver, tc.size)
		}
	}
	for _, f := range []diskformat.Format{"", "VHDX", "vpc", diskformat.VHD} {
		if _, err := BlockdevArgs("n", fixed, f, true); err == nil || !strings.Contains(err.Error(), fixed) {
			t.Errorf("format %q: %v", f, err)
		}
	}
	if _, err := BlockdevArgs("n", tiny, diskformat.VHDFixed, true); err == nil || !strings.Contains(err.Error(), tiny) {
		t.Errorf("a file no larger than a footer as a fixed VHD: %v", err)
	}
}
