package refcount

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
)

var errInjected = errors.New("injected failure")

// fake is a controller: its hooks log what they do, fail while the
// matching fail* is set, and block while the matching gate is set. It
// fails the test when two hooks of one key overlap or a step runs out of
// order (unmount of something not mounted, remove of something mounted).
type fake struct {
	t  *testing.T
	mu sync.Mutex
	// value handed out by the next Attach/Mount for a key
	next    int
	calls   []string
	running map[string]bool
	mounted map[string]bool
	plugged map[string]bool

	failAttach, failMount, failUnmount, failRemove error
	// entered, when set, receives the hook name as it starts; gate, when
	// set, is waited on before the hook returns.
	entered chan string
	gate    chan struct{}
}

func newFake(t *testing.T) *fake {
	return &fake{t: t, running: map[string]bool{}, mounted: map[string]bool{}, plugged: map[string]bool{}}
}

// step runs one hook: records it, waits on the gate, returns its failure.
func (f *fake) step(name, k string, fail *error) error {
	f.mu.Lock()
	if f.running[k] {
		f.t.Errorf("%s of %s while another hook of it runs", name, k)
	}
	f.running[k] = true
	f.calls = append(f.calls, name+" "+k)
	entered, gate := f.entered, f.gate
	err := *fail // the outcome is decided as the hook starts
	f.mu.Unlock()
	if entered != nil {
		entered <- name
	}
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running[k] = false
	return err
}

func (f *fake) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if len(c) > len(name) && c[:len(name)+1] == name+" " {
			n++
		}
	}
	return n
}

func (f *fake) set(fail *error, err error) {
	f.mu.Lock()
	*fail = err
	f.mu.Unlock()
}

func (f *fake) hooks(withRemove bool) Hooks[string, string, int] {
	h := Hooks[string, string, int]{
		Attach: func(ctx context.Context, k, opts string) (int, error) {
			if err := f.step("attach", k, &f.failAttach); err != nil {
				return 0, err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			f.plugged[k], f.mounted[k] = true, true
			f.next++
			return f.next, nil
		},
		Mount: func(ctx context.Context, k string, v int) (int, error) {
			if err := f.step("mount", k, &f.failMount); err != nil {
				return 0, err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.mounted[k] || !f.plugged[k] {
				f.t.Errorf("mount of %s: mounted %v plugged %v", k, f.mounted[k], f.plugged[k])
			}
			f.mounted[k] = true
			f.next++
			return f.next, nil
		},
		Unmount: func(ctx context.Context, k string, v int) error {
			if err := f.step("unmount", k, &f.failUnmount); err != nil {
				return err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if !f.mounted[k] {
				f.t.Errorf("unmount of %s which is not mounted", k)
			}
			f.mounted[k] = false
			return nil
		},
	}
	if withRemove {
		h.Remove = func(ctx context.Context, k string, v int) error {
			if err := f.step("remove", k, &f.failRemove); err != nil {
				return err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.mounted[k] || !f.plugged[k] {
				f.t.Errorf("remove of %s: mounted %v plugged %v", k, f.mounted[k], f.plugged[k])
			}
			f.plugged[k] = false
			return nil
		}
	}
	return h
}

func mustAttach(t *testing.T, tab *Table[string, string, int], k string) *Ref[string, string, int] {
	t.Helper()
	r, err := tab.Attach(context.Background(), k, "")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRefCountsAndOrder(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(true))
	r1, r2 := mustAttach(t, tab, "a"), mustAttach(t, tab, "a")
	if tab.RefCount("a") != 2 || f.count("attach") != 1 || r1.Value() != r2.Value() {
		t.Fatalf("refs %d attaches %d values %d %d", tab.RefCount("a"), f.count("attach"), r1.Value(), r2.Value())
	}
	if _, err := tab.Attach(ctx, "a", "other"); !errors.Is(err, ErrConflict) {
		t.Fatalf("other options: %v", err)
	}
	if err := r1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r1.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("second release: %v", err)
	}
	if tab.RefCount("a") != 1 || len(f.calls) != 1 {
		t.Fatalf("refs %d calls %v", tab.RefCount("a"), f.calls)
	}
	if err := r2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []string{"attach a", "unmount a", "remove a"}; !slices.Equal(f.calls, want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
	if tab.RefCount("a") != 0 || tab.Len() != 0 {
		t.Fatalf("refs %d len %d", tab.RefCount("a"), tab.Len())
	}
	if err := r2.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("release after the last: %v", err)
	}
}

func TestUnmountFailureKeepsEverything(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(true))
	r := mustAttach(t, tab, "a")
	f.set(&f.failUnmount, errInjected)
	for i := 0; i < 2; i++ { // failing, then failing again on retry
		if err := r.Release(ctx); !errors.Is(err, errInjected) {
			t.Fatalf("release %d: %v", i, err)
		}
		if tab.RefCount("a") != 1 || f.count("remove") != 0 || !f.mounted["a"] {
			t.Fatalf("after failed unmount: refs %d calls %v", tab.RefCount("a"), f.calls)
		}
	}
	// Still mounted: a new caller gets a reference without any work.
	r2 := mustAttach(t, tab, "a")
	if tab.RefCount("a") != 2 || f.count("attach") != 1 || f.count("mount") != 0 {
		t.Fatalf("attach during failed release: refs %d calls %v", tab.RefCount("a"), f.calls)
	}
	// The retry now just drops the failed holder's reference.
	f.set(&f.failUnmount, nil)
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tab.RefCount("a") != 1 || f.count("unmount") != 2 {
		t.Fatalf("refs %d calls %v", tab.RefCount("a"), f.calls)
	}
	if err := r2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 0 || f.count("unmount") != 3 || f.count("remove") != 1 || f.plugged["a"] {
		t.Fatalf("len %d calls %v", tab.Len(), f.calls)
	}
	if err := r.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("release after success: %v", err)
	}
}

func TestRemoveFailureRetriesOnlyRemove(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(true))
	r := mustAttach(t, tab, "a")
	f.set(&f.failRemove, errInjected)
	if err := r.Release(ctx); !errors.Is(err, errInjected) {
		t.Fatal(err)
	}
	if tab.RefCount("a") != 1 || f.mounted["a"] || !f.plugged["a"] {
		t.Fatalf("after failed remove: refs %d mounted %v plugged %v", tab.RefCount("a"), f.mounted["a"], f.plugged["a"])
	}
	f.set(&f.failRemove, nil)
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []string{"attach a", "unmount a", "remove a", "remove a"}; !slices.Equal(f.calls, want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}

	// Attach in between gets the guest part mounted again.
	r = mustAttach(t, tab, "b")
	f.set(&f.failRemove, errInjected)
	if err := r.Release(ctx); !errors.Is(err, errInjected) {
		t.Fatal(err)
	}
	f.set(&f.failMount, errInjected)
	if _, err := tab.Attach(ctx, "b", ""); !errors.Is(err, errInjected) {
		t.Fatalf("failing remount: %v", err)
	}
	if tab.RefCount("b") != 1 {
		t.Fatalf("failed remount changed refs to %d", tab.RefCount("b"))
	}
	f.set(&f.failMount, nil)
	r2 := mustAttach(t, tab, "b")
	if !f.mounted["b"] || tab.RefCount("b") != 2 || r2.Value() == r.Value() {
		t.Fatalf("remount: mounted %v refs %d value %d (was %d)", f.mounted["b"], tab.RefCount("b"), r2.Value(), r.Value())
	}
	f.set(&f.failRemove, nil)
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 0 || f.plugged["b"] || f.count("unmount") != 3 || f.count("remove") != 4 {
		t.Fatalf("len %d calls %v", tab.Len(), f.calls)
	}
}

// Callers attaching while the last release is failing all get a usable
// reference once it has failed; the counts stay exact.
func TestAttachDuringFailingRelease(t *testing.T) {
	for _, step := range []string{"unmount", "remove"} {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			f := newFake(t)
			tab := New(f.hooks(true))
			r := mustAttach(t, tab, "a")
			if step == "unmount" {
				f.set(&f.failUnmount, errInjected)
			} else {
				f.set(&f.failRemove, errInjected)
			}
			entered, gate := make(chan string, 4), make(chan struct{})
			f.mu.Lock()
			f.entered, f.gate = entered, gate
			f.mu.Unlock()
			relErr := make(chan error)
			go func() { relErr <- r.Release(ctx) }()
			for name := range entered { // wait until the failing step runs
				if name == step {
					break
				}
				gate <- struct{}{} // let the unmount before a remove finish
			}
			const n = 8
			refs := make(chan *Ref[string, string, int], n)
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := tab.Attach(ctx, "a", "")
					if err != nil {
						t.Error(err)
						return
					}
					refs <- r
				}()
			}
			close(gate)
			if err := <-relErr; !errors.Is(err, errInjected) {
				t.Fatalf("release: %v", err)
			}
			f.mu.Lock()
			f.entered, f.gate = nil, nil
			f.mu.Unlock()
			wg.Wait()
			close(refs)
			if got := tab.RefCount("a"); got != n+1 {
				t.Fatalf("RefCount %d, want %d", got, n+1)
			}
			if want := map[string]int{"unmount": 0, "remove": 1}[step]; f.count("mount") != want || !f.mounted["a"] {
				t.Fatalf("mounts %d (want %d), mounted %v: %v", f.count("mount"), want, f.mounted["a"], f.calls)
			}
			f.set(&f.failUnmount, nil)
			f.set(&f.failRemove, nil)
			all := []*Ref[string, string, int]{r}
			for r := range refs {
				all = append(all, r)
			}
			for _, r := range all {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := r.Release(ctx); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if tab.Len() != 0 || f.plugged["a"] || f.mounted["a"] || f.count("attach") != 1 {
				t.Fatalf("len %d calls %v", tab.Len(), f.calls)
			}
		})
	}
}

func TestWaitersShareFailedAttach(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(true))
	entered, gate := make(chan string, 1), make(chan struct{})
	f.entered, f.gate, f.failAttach = entered, gate, errInjected
	first := make(chan error)
	go func() { _, err := tab.Attach(ctx, "a", ""); first <- err }()
	<-entered
	// The first attach will fail (decided as it started); any attach after
	// it succeeds and passes no gate.
	f.mu.Lock()
	f.failAttach, f.entered, f.gate = nil, nil, nil
	f.mu.Unlock()
	// A waiter whose context ends gives up with the context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tab.Attach(cctx, "a", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { _, err := tab.Attach(ctx, "a", ""); errs <- err }()
	}
	close(gate)
	if err := <-first; !errors.Is(err, errInjected) {
		t.Fatal(err)
	}
	ok := 0
	for i := 0; i < n; i++ {
		// A waiter that arrived in time shares the failure; a later one
		// attaches afresh, once, and the others share that attach.
		if err := <-errs; err == nil {
			ok++
		} else if !errors.Is(err, errInjected) {
			t.Fatal(err)
		}
	}
	if tab.RefCount("a") != ok || f.count("attach") != 1+min(ok, 1) {
		t.Fatalf("refs %d ok %d calls %v", tab.RefCount("a"), ok, f.calls)
	}
}

// Without Remove (VPMEM) the host part stays: ref zero leaves the entry
// idle and the next Attach mounts it again.
func TestWithoutRemoveEntryStaysIdle(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(false))
	r := mustAttach(t, tab, "a")
	f.set(&f.failUnmount, errInjected)
	if err := r.Release(ctx); !errors.Is(err, errInjected) || tab.RefCount("a") != 1 {
		t.Fatalf("failed unmount: %v refs %d", err, tab.RefCount("a"))
	}
	f.set(&f.failUnmount, nil)
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 1 || tab.RefCount("a") != 0 || f.mounted["a"] || !f.plugged["a"] {
		t.Fatalf("idle: len %d refs %d", tab.Len(), tab.RefCount("a"))
	}
	r2 := mustAttach(t, tab, "a")
	if want := []string{"attach a", "unmount a", "unmount a", "mount a"}; !slices.Equal(f.calls, want) || r2.Value() == r.Value() {
		t.Fatalf("calls %v, want %v; value %d", f.calls, want, r2.Value())
	}
	if err := r2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("stale release: %v", err)
	}
}

// Many callers on a few keys: every hook of a key runs alone (the fake
// checks), and everything attached is removed in the end.
func TestConcurrentChurn(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	tab := New(f.hooks(true))
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				k := fmt.Sprintf("k%d", (w+i)%3)
				r, err := tab.Attach(ctx, k, "")
				if err != nil {
					t.Error(err)
					return
				}
				if err := r.Release(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if tab.Len() != 0 || f.count("attach") != f.count("remove") || f.count("attach") != f.count("unmount") {
		t.Fatalf("len %d attaches %d unmounts %d removes %d", tab.Len(), f.count("attach"), f.count("unmount"), f.count("remove"))
	}
	for k, p := range f.plugged {
		if p {
			t.Errorf("%s still plugged", k)
		}
	}
}
