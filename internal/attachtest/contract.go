package attachtest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/refcount"
)

// Handle is one reference an attachment controller (or a fake of one)
// hands out.
type Handle interface {
	GuestPath() string
	Release(ctx context.Context) error
}

// Subject is an attachment controller under the contract, with one thing
// to attach (a disk, a layer, a directory) and ways to observe and break
// it. Contract asks for a fresh Subject for each case.
type Subject struct {
	// Attach attaches the thing (again).
	Attach func(ctx context.Context) (Handle, error)
	// RefCount is the controller's count for the thing.
	RefCount func() int
	// HostAttached reports whether the VMM holds the thing (a disk
	// plugged, a device or a daemon serving it).
	HostAttached func(t *testing.T) bool
	// GuestMounted reports whether the guest has it mounted at guestPath.
	GuestMounted func(t *testing.T, guestPath string) bool
	// BreakUnmount makes the guest's unmount of guestPath fail until fix
	// is called.
	BreakUnmount func(t *testing.T, guestPath string) (fix func())
	// BreakRemove makes removing the host part fail until fix is called;
	// nil when the host part is never removed.
	BreakRemove func(t *testing.T) (fix func())
	// Unmounts and Removes count the guest unmounts and host removals
	// attempted so far; nil when the subject cannot observe them.
	Unmounts, Removes func() int
	// KeepsHost is set when the host part stays at ref zero (VPMEM: QEMU
	// cannot unplug pmem).
	KeepsHost bool
}

// Contract checks the release contract every attachment controller and
// every fake of one must keep: exact reference counts; only the last
// Release does work; a failed Release keeps the reference, the guest mount
// and the host part, and a later Release retries from the failed step; a
// thing still mounted in the guest is never removed from the host; Attach
// during a failed release gives a usable reference; Release after a
// successful one is refcount.ErrAlreadyReleased.
func Contract(t *testing.T, newSubject func(t *testing.T) Subject) {
	ctx := context.Background()
	attach := func(t *testing.T, s Subject) Handle {
		t.Helper()
		h, err := s.Attach(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	release := func(t *testing.T, h Handle) {
		t.Helper()
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// state checks refs, the host part and the guest mount at gp.
	state := func(t *testing.T, s Subject, gp string, refs int, host, mounted bool) {
		t.Helper()
		if got := s.RefCount(); got != refs {
			t.Fatalf("RefCount %d, want %d", got, refs)
		}
		if got := s.HostAttached(t); got != host {
			t.Fatalf("host part attached: %v, want %v", got, host)
		}
		if got := s.GuestMounted(t, gp); got != mounted {
			t.Fatalf("mounted at %s in the guest: %v, want %v", gp, got, mounted)
		}
	}
	released := func(t *testing.T, s Subject, h Handle) {
		t.Helper()
		state(t, s, h.GuestPath(), 0, s.KeepsHost, false)
		if err := h.Release(ctx); !errors.Is(err, refcount.ErrAlreadyReleased) {
			t.Fatalf("release after a successful release: %v", err)
		}
	}

	canBreakRemove := false
	t.Run("refcount", func(t *testing.T) {
		s := newSubject(t)
		canBreakRemove = s.BreakRemove != nil
		h1 := attach(t, s)
		h2 := attach(t, s)
		if h1.GuestPath() != h2.GuestPath() {
			t.Fatalf("two references, two guest paths: %s %s", h1.GuestPath(), h2.GuestPath())
		}
		state(t, s, h1.GuestPath(), 2, true, true)
		release(t, h1)
		state(t, s, h1.GuestPath(), 1, true, true)
		if err := h1.Release(ctx); !errors.Is(err, refcount.ErrAlreadyReleased) {
			t.Fatalf("second release of one reference: %v", err)
		}
		state(t, s, h1.GuestPath(), 1, true, true)
		release(t, h2)
		released(t, s, h2)
	})

	t.Run("unmount fails", func(t *testing.T) {
		s := newSubject(t)
		h := attach(t, s)
		gp := h.GuestPath()
		fix := s.BreakUnmount(t, gp)
		removes := count(s.Removes)
		for i := 0; i < 2; i++ { // the retry fails the same way while broken
			err := h.Release(ctx)
			if err == nil || errors.Is(err, refcount.ErrAlreadyReleased) {
				fix()
				t.Fatalf("release %d with the unmount broken: %v", i, err)
			}
			t.Logf("release with the unmount broken: %v", err)
			state(t, s, gp, 1, true, true)
		}
		if count(s.Removes) != removes {
			fix()
			t.Fatal("host part removed while the guest still had it mounted")
		}
		// A new reference meanwhile is usable: same mount, still there.
		h2 := attach(t, s)
		if h2.GuestPath() != gp {
			fix()
			t.Fatalf("attach during failed release: guest path %s, want %s", h2.GuestPath(), gp)
		}
		state(t, s, gp, 2, true, true)
		release(t, h2) // not the last: no work, no failure
		state(t, s, gp, 1, true, true)
		fix()
		release(t, h)
		released(t, s, h)
	})

	t.Run("concurrent", func(t *testing.T) {
		s := newSubject(t)
		const n = 6
		hs := make(chan Handle, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h, err := s.Attach(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				hs <- h
			}()
		}
		wg.Wait()
		close(hs)
		if t.Failed() {
			t.FailNow()
		}
		var all []Handle
		for h := range hs {
			all = append(all, h)
		}
		state(t, s, all[0].GuestPath(), n, true, true)
		for _, h := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := h.Release(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		released(t, s, all[0])
	})

	if !canBreakRemove {
		return // the host part is never removed, or cannot be broken
	}
	t.Run("remove fails", func(t *testing.T) {
		s := newSubject(t)
		h := attach(t, s)
		gp := h.GuestPath()
		fix := s.BreakRemove(t)
		if err := h.Release(ctx); err == nil || errors.Is(err, refcount.ErrAlreadyReleased) {
			fix()
			t.Fatalf("release with the removal broken: %v", err)
		}
		state(t, s, gp, 1, true, false)
		unmounts, removes := count(s.Unmounts), count(s.Removes)
		fix()
		release(t, h)
		if s.Unmounts != nil && count(s.Unmounts) != unmounts {
			t.Fatal("the retry unmounted again")
		}
		if s.Removes != nil && count(s.Removes) != removes+1 {
			t.Fatalf("the retry removed %d times", count(s.Removes)-removes)
		}
		released(t, s, h)
	})

	t.Run("attach after failed remove", func(t *testing.T) {
		s := newSubject(t)
		h := attach(t, s)
		fix := s.BreakRemove(t)
		if err := h.Release(ctx); err == nil {
			fix()
			t.Fatal("release with the removal broken succeeded")
		}
		// The guest part is gone, the host part is not: a new reference
		// mounts it again.
		h2 := attach(t, s)
		state(t, s, h2.GuestPath(), 2, true, true)
		unmounts := count(s.Unmounts)
		fix()
		release(t, h) // not the last any more: no work
		state(t, s, h2.GuestPath(), 1, true, true)
		if s.Unmounts != nil && count(s.Unmounts) != unmounts {
			t.Fatal("a release that was not the last unmounted")
		}
		release(t, h2)
		released(t, s, h2)
	})
}

func count(f func() int) int {
	if f == nil {
		return 0
	}
	return f()
}
