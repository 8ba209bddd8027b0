package share

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/testutil"
)

var errInjected = errors.New("injected failure")

// served is what the fake host serves under a tag: the directory, and its
// listing when the share was added.
type served struct {
	dir   string
	names []string
}

// fakeHost is a VMM that checks it is never asked to add a tag twice or
// remove a missing one. Its hooks inject failures or block.
type fakeHost struct {
	*attachtest.Table[string, served]
}

func (h fakeHost) AddShare(ctx context.Context, tag, dir string, readOnly bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return h.Add(tag, served{dir, names})
}

func (h fakeHost) RemoveShare(ctx context.Context, tag string) error { return h.Remove(tag) }

func (h fakeHost) served(tag string) served {
	v, _ := h.Get(tag)
	return v
}

// fakeGuest keeps the guest's mount table (guest path → read-only), which
// fails the test on a double mount or a stray unmount.
type fakeGuest struct {
	*attachtest.Table[string, bool]
}

func (g fakeGuest) MountVirtiofs(ctx context.Context, tag string, ro bool, gp string) error {
	return g.Add(gp, ro)
}
func (g fakeGuest) Unmount(ctx context.Context, gp string) error { return g.Remove(gp) }

func setup(t *testing.T) (*Controller, *fakeHost, *fakeGuest, string) {
	h := &fakeHost{attachtest.New[string, served](t, "share")}
	g := &fakeGuest{attachtest.New[string, bool](t, "guest mount")}
	state := t.TempDir()
	return New(h, g, state), h, g, state
}

func TestDirectoryRefCountByPathAndReadOnly(t *testing.T) {
	ctx := context.Background()
	c, h, g, _ := setup(t)
	dir := t.TempDir()
	a, err := c.Attach(ctx, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Attach(ctx, dir+"/.", true)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := c.Attach(ctx, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if a.Tag() != b.Tag() || a.Tag() == rw.Tag() || a.GuestPath() == rw.GuestPath() {
		t.Fatalf("tags %s %s %s", a.Tag(), b.Tag(), rw.Tag())
	}
	if a.GuestPath() != guestpath.ShareMount(0) || !a.ReadOnly() || rw.ReadOnly() {
		t.Fatalf("guest path %s ro %v/%v", a.GuestPath(), a.ReadOnly(), rw.ReadOnly())
	}
	if c.RefCount(dir, true) != 2 || c.RefCount(dir, false) != 1 {
		t.Fatalf("refs %d %d", c.RefCount(dir, true), c.RefCount(dir, false))
	}
	roA, _ := g.Get(a.GuestPath())
	roRW, _ := g.Get(rw.GuestPath())
	if !roA || roRW {
		t.Fatal("guest mount read-only flags wrong")
	}
	for _, s := range []*Share{a, rw} {
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, _, _ := h.Counts(); n != 1 || c.Active() != 1 {
		t.Fatalf("shares left %d, active %d; want 1", n, c.Active())
	}
	if err := a.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("double release: %v", err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, adds, rms := h.Counts(); n != 0 || adds != 2 || rms != 2 || g.Count() != 0 || c.Active() != 0 {
		t.Fatalf("after all releases: shares %d adds %d removes %d mounts %d", n, adds, rms, g.Count())
	}
}

func TestSingleFileHidesSiblings(t *testing.T) {
	ctx := context.Background()
	c, h, _, state := setup(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	if err := os.WriteFile(file, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := c.Attach(ctx, file, true)
	if err != nil {
		t.Fatal(err)
	}
	sh := h.served(s.Tag())
	if got := sh.names; len(got) != 1 || got[0] != "config.json" {
		t.Fatalf("served directory holds %v, want only config.json", got)
	}
	if s.GuestPath() != s.GuestDir()+"/config.json" {
		t.Fatalf("guest path %s", s.GuestPath())
	}
	a, _ := os.Stat(file)
	b, err := os.Stat(filepath.Join(sh.dir, "config.json"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("served file is not the shared file: %v", err)
	}
	if err := s.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sh.dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("private directory left behind: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(state, "files")); len(left) != 0 {
		t.Fatalf("state dir holds %d entries", len(left))
	}
}

// A file on another file system cannot be hard-linked: it is bind-mounted.
func TestSingleFileAcrossFileSystems(t *testing.T) {
	testutil.NeedRoot(t)
	other, err := os.MkdirTemp("/dev/shm", "share-test-")
	if err != nil {
		testutil.Unavailable(t, err.Error())
	}
	defer os.RemoveAll(other)
	ctx := context.Background()
	c, h, _, _ := setup(t)
	file := filepath.Join(other, "data")
	if err := os.WriteFile(file, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := c.Attach(ctx, file, false)
	if err != nil {
		t.Fatal(err)
	}
	sh := h.served(s.Tag())
	if err := os.WriteFile(filepath.Join(sh.dir, "data"), []byte("written via share"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(file); string(got) != "written via share" {
		t.Fatalf("write through the share not seen in the file: %q", got)
	}
	if err := s.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sh.dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("private directory (bind mount) left behind: %v", err)
	}
	if got, _ := os.ReadFile(file); string(got) != "written via share" {
		t.Fatal("file lost after release")
	}
}

func TestShareFailureInjection(t *testing.T) {
	ctx := context.Background()
	newFile := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noLeftovers := func(t *testing.T, c *Controller, h *fakeHost, g *fakeGuest, state string) {
		t.Helper()
		if n, a, r := h.Counts(); n != 0 || a != r {
			t.Fatalf("host shares %d (adds %d removes %d)", n, a, r)
		}
		if left, _ := os.ReadDir(filepath.Join(state, "files")); len(left) != 0 {
			t.Fatalf("%d private dirs left", len(left))
		}
		if g.Count() != 0 || c.Active() != 0 {
			t.Fatalf("guest mounts %d active %d", g.Count(), c.Active())
		}
	}
	t.Run("add fails", func(t *testing.T) {
		c, h, g, state := setup(t)
		h.AddHook = func(string) error { return errInjected }
		if _, err := c.Attach(ctx, newFile(t), true); !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
		noLeftovers(t, c, h, g, state)
	})
	t.Run("guest mount fails", func(t *testing.T) {
		c, h, g, state := setup(t)
		g.AddHook = func(string) error { return errInjected }
		if _, err := c.Attach(ctx, newFile(t), true); !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
		noLeftovers(t, c, h, g, state)
		if _, a, _ := h.Counts(); a != 1 {
			t.Fatalf("adds %d", a)
		}
	})
	t.Run("failed release keeps the share, retries resume", func(t *testing.T) {
		c, h, g, state := setup(t)
		s, err := c.Attach(ctx, newFile(t), false)
		if err != nil {
			t.Fatal(err)
		}
		fix := g.BreakRemove(func(string) bool { return true }, errInjected)
		if err := s.Release(ctx); !errors.Is(err, errInjected) {
			t.Fatalf("got %v", err)
		}
		fix()
		if h.Count() != 1 || h.RemoveTries() != 0 || g.Count() != 1 || c.Active() != 1 {
			t.Fatalf("after failed unmount: shares %d remove tries %d mounts %d", h.Count(), h.RemoveTries(), g.Count())
		}
		rmErr := errors.New("remove failed")
		fix = h.BreakRemove(func(string) bool { return true }, rmErr)
		if err := s.Release(ctx); !errors.Is(err, rmErr) {
			t.Fatalf("got %v", err)
		}
		fix()
		if left, _ := os.ReadDir(filepath.Join(state, "files")); len(left) != 1 || g.Count() != 0 || c.RefCount(s.HostPath(), false) != 1 {
			t.Fatalf("after failed removal: private dirs %d mounts %d", len(left), g.Count())
		}
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if g.RemoveTries() != 2 || h.RemoveTries() != 2 {
			t.Fatalf("unmounts %d removes %d, want 2 and 2", g.RemoveTries(), h.RemoveTries())
		}
		noLeftovers(t, c, h, g, state)
	})
	t.Run("bad input", func(t *testing.T) {
		c, h, g, state := setup(t)
		if _, err := c.Attach(ctx, filepath.Join(t.TempDir(), "missing"), true); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("missing: %v", err)
		}
		if _, err := c.Attach(ctx, "", true); err == nil {
			t.Fatal("empty path accepted")
		}
		if _, err := c.Attach(ctx, "/dev/null", true); err == nil {
			t.Fatal("device node accepted")
		}
		noLeftovers(t, c, h, g, state)
	})
}

func TestConcurrentShares(t *testing.T) {
	ctx := context.Background()
	c, h, g, _ := setup(t)
	gate := make(chan struct{})
	h.AddHook = func(string) error { <-gate; return nil }
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	const per = 6
	var wg sync.WaitGroup
	got := make(chan *Share, len(dirs)*per*2)
	for _, d := range dirs {
		for i := 0; i < per; i++ {
			for _, ro := range []bool{true, false} {
				wg.Add(1)
				go func(d string, ro bool) {
					defer wg.Done()
					s, err := c.Attach(ctx, d, ro)
					if err != nil {
						t.Error(err)
						return
					}
					got <- s
				}(d, ro)
			}
		}
	}
	time.Sleep(10 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(got)
	if n, a, _ := h.Counts(); n != 2*len(dirs) || a != 2*len(dirs) {
		t.Fatalf("shares %d adds %d, want %d", n, a, 2*len(dirs))
	}
	for _, d := range dirs {
		if c.RefCount(d, true) != per || c.RefCount(d, false) != per {
			t.Fatalf("refs %d/%d", c.RefCount(d, true), c.RefCount(d, false))
		}
	}
	for s := range got {
		wg.Add(2)
		go func(s *Share) {
			defer wg.Done()
			if err := s.Release(ctx); err != nil {
				t.Error(err)
			}
		}(s)
		go func(p string, ro bool) {
			defer wg.Done()
			s, err := c.Attach(ctx, p, ro)
			if err != nil {
				t.Error(err)
				return
			}
			if err := s.Release(ctx); err != nil {
				t.Error(err)
			}
		}(s.HostPath(), s.ReadOnly())
	}
	wg.Wait()
	if n, a, r := h.Counts(); n != 0 || a != r || g.Count() != 0 || c.Active() != 0 {
		t.Fatalf("after churn: shares %d adds %d removes %d mounts %d active %d", n, a, r, g.Count(), c.Active())
	}
}
