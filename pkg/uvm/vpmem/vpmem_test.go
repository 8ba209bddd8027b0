package vpmem

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/vhd"
)

var errInjected = errors.New("injected failure")

// fakeHost is a VMM that checks it is never asked to fill a bound slot.
// Its AddHook injects failures or blocks.
type fakeHost struct{ *attachtest.Table[int, string] }

func (h fakeHost) AddPmem(ctx context.Context, slot int, p string, size uint64) (uint64, error) {
	if err := h.Add(slot, p); err != nil {
		return 0, err
	}
	return 1<<32 + uint64(slot)<<30, nil
}

// fakeGuest keeps the guest's mount table, which fails the test on a double
// mount or a stray unmount.
type fakeGuest struct {
	*attachtest.Table[string, Device]
	t *testing.T
}

func (g fakeGuest) MountPmem(ctx context.Context, d Device, gp string) error {
	if err := g.Add(gp, d); err != nil {
		return err
	}
	if d.Addr == 0 {
		g.t.Errorf("mount of device %d without an address", d.Slot)
	}
	return nil
}
func (g fakeGuest) Unmount(ctx context.Context, gp string) error { return g.Remove(gp) }

func setup(t *testing.T, cfg Config) (*Controller, *fakeHost, *fakeGuest) {
	h := &fakeHost{attachtest.New[int, string](t, "pmem slot")}
	g := &fakeGuest{attachtest.New[string, Device](t, "guest mount"), t}
	return New(h, g, cfg), h, g
}

// layers makes n layer images of size data bytes with a fixed VHD footer.
func layers(t *testing.T, n int, data int64) []string {
	t.Helper()
	dir := t.TempDir()
	out := make([]string, n)
	for i := range out {
		out[i] = filepath.Join(dir, fmt.Sprintf("layer%d.vhd", i))
		f, err := os.Create(out[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(data); err != nil {
			t.Fatal(err)
		}
		if err := vhd.AppendFixedFooter(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return out
}

func TestRefCountAndIdleReuse(t *testing.T) {
	ctx := context.Background()
	c, h, g := setup(t, Config{})
	p := layers(t, 1, 8192)[0]
	m1, err := c.Attach(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := c.Attach(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if m1.GuestPath() != guestpath.PmemMount(0) || m2.GuestPath() != m1.GuestPath() {
		t.Fatalf("guest paths %q %q", m1.GuestPath(), m2.GuestPath())
	}
	if m1.Device().Size != 8192 {
		t.Fatalf("mapped size %d, want 8192 (footer excluded)", m1.Device().Size)
	}
	if c.RefCount(p) != 2 {
		t.Fatalf("RefCount %d", c.RefCount(p))
	}
	if err := m1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if g.Count() != 1 {
		t.Fatal("unmounted while referenced")
	}
	if err := m1.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("double release: %v", err)
	}
	if err := m2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if g.Count() != 0 || c.RefCount(p) != 0 {
		t.Fatal("still mounted after last release")
	}
	if n, used := c.Bound(); n != 1 || used != 8192 {
		t.Fatalf("Bound = %d, %d; the slot must stay bound", n, used)
	}
	m3, err := c.Attach(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, adds, _ := h.Counts(); adds != 1 || m3.Device().Slot != 0 || m3.GuestPath() != guestpath.PmemMount(1) {
		t.Fatalf("re-attach: adds %d slot %d path %s", adds, m3.Device().Slot, m3.GuestPath())
	}
	if err := m3.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSlotsAndSizeLimits(t *testing.T) {
	ctx := context.Background()
	c, _, _ := setup(t, Config{Slots: 2, MaxSize: 16384, Budget: 20480})
	ps := layers(t, 3, 8192)
	big := layers(t, 1, 16384+4096)[0]
	if _, err := c.Attach(ctx, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over MaxSize: %v", err)
	}
	a, err := c.Attach(ctx, ps[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Attach(ctx, ps[1])
	if err != nil {
		t.Fatal(err)
	}
	if a.Device().Slot != 0 || b.Device().Slot != 1 {
		t.Fatalf("slots %d %d", a.Device().Slot, b.Device().Slot)
	}
	_ = a.Release(ctx)
	_ = b.Release(ctx)
	if _, err := c.Attach(ctx, ps[2]); !errors.Is(err, ErrNoFreeSlot) || errors.Is(err, ErrTooLarge) {
		t.Fatalf("third layer with both slots bound: %v", err)
	}
	// Budget: 12288 of 20480 left after one; a 16 KiB layer does not fit.
	c2, _, _ := setup(t, Config{Slots: 4, Budget: 20480})
	if _, err := c2.Attach(ctx, ps[0]); err != nil {
		t.Fatal(err)
	}
	mid := layers(t, 1, 16384)[0]
	if _, err := c2.Attach(ctx, mid); !errors.Is(err, ErrNoFreeSlot) {
		t.Fatalf("over remaining budget: %v", err)
	}
	if _, err := c2.Attach(ctx, layers(t, 1, 24576)[0]); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over whole budget: %v", err)
	}
	if _, err := c.Attach(ctx, filepath.Join(t.TempDir(), "nope.vhd")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestMappedSize(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if n, err := MappedSize(write("raw", 8192), 4096); err != nil || n != 8192 {
		t.Fatalf("raw image: %d %v", n, err)
	}
	if n, err := MappedSize(layers(t, 1, 4096)[0], 4096); err != nil || n != 4096 {
		t.Fatalf("layer.vhd: %d %v", n, err)
	}
	for _, tc := range []struct {
		name string
		size int64
	}{{"empty", 0}, {"odd", 5000}, {"raw-with-tail", 8192 + 512}} {
		_, err := MappedSize(write(tc.name, tc.size), 4096)
		if !errors.Is(err, ErrUnmappable) || !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrUnmappable (matching ErrTooLarge)", tc.name, err)
		}
	}
	// A dynamic VHD's data is not laid out flat: refuse it.
	ft, err := vhd.NewFixedFooter(4096)
	if err != nil {
		t.Fatal(err)
	}
	ft.DiskType = vhd.DiskTypeDynamic
	b, _ := ft.MarshalBinary()
	p := filepath.Join(dir, "dyn.vhd")
	if err := os.WriteFile(p, append(make([]byte, 4096), b...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := MappedSize(p, 4096); !errors.Is(err, ErrUnmappable) {
		t.Fatalf("dynamic VHD: %v", err)
	}
}

func TestFailureInjection(t *testing.T) {
	ctx := context.Background()
	t.Run("add fails", func(t *testing.T) {
		c, h, _ := setup(t, Config{Slots: 1})
		h.AddHook = func(int) error { return errInjected }
		p := layers(t, 1, 4096)[0]
		if _, err := c.Attach(ctx, p); !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
		if n, used := c.Bound(); n != 0 || used != 0 {
			t.Fatalf("failed add kept slot/budget: %d %d", n, used)
		}
		h.AddHook = nil
		m, err := c.Attach(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		_ = m.Release(ctx)
	})
	t.Run("add fails after plug", func(t *testing.T) {
		c, h, _ := setup(t, Config{Slots: 2})
		h.AddHook = func(int) error { return fmt.Errorf("query: %w", ErrPlugged) }
		ps := layers(t, 2, 4096)
		if _, err := c.Attach(ctx, ps[0]); !errors.Is(err, ErrPlugged) {
			t.Fatal(err)
		}
		h.AddHook = nil
		m, err := c.Attach(ctx, ps[1])
		if err != nil || m.Device().Slot != 1 {
			t.Fatalf("lost slot reused: %v %v", m, err)
		}
	})
	t.Run("guest mount fails, slot stays bound for the layer", func(t *testing.T) {
		c, h, g := setup(t, Config{Slots: 1})
		g.AddHook = func(string) error { return errInjected }
		p := layers(t, 1, 4096)[0]
		if _, err := c.Attach(ctx, p); !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
		g.AddHook = nil
		m, err := c.Attach(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if _, adds, _ := h.Counts(); adds != 1 || g.Count() != 1 {
			t.Fatalf("adds %d mounts %d", adds, g.Count())
		}
		_ = m.Release(ctx)
	})
	t.Run("unmount fails: reference kept, retry unmounts", func(t *testing.T) {
		c, _, g := setup(t, Config{Slots: 1})
		p := layers(t, 1, 4096)[0]
		m, err := c.Attach(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		fix := g.BreakRemove(func(string) bool { return true }, errInjected)
		if err := m.Release(ctx); !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
		if c.RefCount(p) != 1 || g.Count() != 1 {
			t.Fatalf("after failed unmount: refs %d mounts %d", c.RefCount(p), g.Count())
		}
		// Meanwhile the layer is still usable where it is mounted.
		m2, err := c.Attach(ctx, p)
		if err != nil || m2.GuestPath() != m.GuestPath() {
			t.Fatalf("attach during failed release: %v %v", m2, err)
		}
		fix()
		for _, m := range []*Mount{m, m2} {
			if err := m.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if c.RefCount(p) != 0 || g.Count() != 0 || g.RemoveTries() != 2 {
			t.Fatalf("refs %d mounts %d unmounts %d", c.RefCount(p), g.Count(), g.RemoveTries())
		}
		m3, err := c.Attach(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if m3.GuestPath() == m.GuestPath() || m3.Device() != m.Device() {
			t.Fatalf("remount: %s %+v (was %s %+v)", m3.GuestPath(), m3.Device(), m.GuestPath(), m.Device())
		}
	})
}

func TestConcurrentAttachRelease(t *testing.T) {
	ctx := context.Background()
	c, h, g := setup(t, Config{Slots: 8})
	gate := make(chan struct{})
	h.AddHook = func(int) error { <-gate; return nil }
	ps := layers(t, 4, 4096)
	const perLayer = 8
	var wg sync.WaitGroup
	ms := make(chan *Mount, len(ps)*perLayer)
	for _, p := range ps {
		for i := 0; i < perLayer; i++ {
			wg.Add(1)
			go func(p string) {
				defer wg.Done()
				m, err := c.Attach(ctx, p)
				if err != nil {
					t.Error(err)
					return
				}
				ms <- m
			}(p)
		}
	}
	time.Sleep(10 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(ms)
	if devs, adds, _ := h.Counts(); devs != len(ps) || adds != len(ps) {
		t.Fatalf("devs %d adds %d, want %d each", devs, adds, len(ps))
	}
	for _, p := range ps {
		if c.RefCount(p) != perLayer {
			t.Fatalf("%s RefCount %d", p, c.RefCount(p))
		}
	}
	// Release concurrently while others keep attaching and releasing.
	for m := range ms {
		wg.Add(2)
		go func(m *Mount) {
			defer wg.Done()
			if err := m.Release(ctx); err != nil {
				t.Error(err)
			}
		}(m)
		go func(p string) {
			defer wg.Done()
			m, err := c.Attach(ctx, p)
			if err != nil {
				t.Error(err)
				return
			}
			if err := m.Release(ctx); err != nil {
				t.Error(err)
			}
		}(m.HostPath())
	}
	wg.Wait()
	if g.Count() != 0 {
		t.Fatalf("%d guest mounts left", g.Count())
	}
	if n, _ := c.Bound(); n != len(ps) {
		t.Fatalf("Bound %d", n)
	}
	if _, adds, _ := h.Counts(); adds != len(ps) {
		t.Fatalf("adds %d: a bound slot was plugged again", adds)
	}
}

func TestWaitersShareFailedAttach(t *testing.T) {
	ctx := context.Background()
	c, h, _ := setup(t, Config{Slots: 4})
	gate := make(chan struct{})
	var once sync.Once
	h.AddHook = func(int) error {
		<-gate
		var err error
		once.Do(func() { err = errInjected })
		return err
	}
	p := layers(t, 1, 4096)[0]
	const n = 6
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			m, err := c.Attach(ctx, p)
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
				t.Fatal(err)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("nobody saw the failure")
	}
	if n, _ := c.Bound(); n > 1 {
		t.Fatalf("%d slots bound for one layer", n)
	}
}
