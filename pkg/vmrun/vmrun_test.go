package vmrun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/fakeuvm"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/runspec"
)

type env struct {
	f     *fakeuvm.UVM
	sb    *Sandbox
	tmp   string
	base  string
	ends  []string // "stop" or "kill", one per end
	endMu sync.Mutex
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{f: fakeuvm.New(), tmp: t.TempDir()}
	e.base = filepath.Join(e.tmp, "base")
	os.MkdirAll(e.base, 0o755)
	os.WriteFile(filepath.Join(e.base, layers.LayerFile), make([]byte, 4096), 0o644)
	e.sb = newSandbox(e.f, Options{}, func(_ context.Context, graceful bool) error {
		e.endMu.Lock()
		defer e.endMu.Unlock()
		if graceful {
			e.ends = append(e.ends, "stop")
		} else {
			e.ends = append(e.ends, "kill")
		}
		return nil
	})
	return e
}

// scratch makes a container's scratch folder, as the store does.
func (e *env) scratch(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(e.tmp, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, layers.ScratchFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) add(t *testing.T, id string, keep bool, mounts ...string) *Container {
	t.Helper()
	spec, err := runspec.Build(runspec.Flags{Args: []string{"true"}, Mounts: mounts})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.sb.Add(context.Background(), ContainerConfig{ID: id, Spec: spec, LayerFolders: []string{e.base, e.scratch(t, id)}, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) end(t *testing.T, want string) {
	t.Helper()
	if err := e.sb.End(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(e.ends) != 1 || e.ends[0] != want {
		t.Fatalf("VM ended %v, want %s once", e.ends, want)
	}
	if err := e.sb.End(context.Background()); err != nil || len(e.ends) != 1 {
		t.Fatalf("second End: %v, ends %v", err, e.ends)
	}
}

// A disposable container's spec is finished for the guest, and its VM just
// quits: nothing is released first.
func TestDisposableLastIsNotReleased(t *testing.T) {
	e := newEnv(t)
	c := e.add(t, "c1", false)
	if !c.Disposable {
		t.Fatal("plain container not disposable")
	}
	if _, ok := e.f.Combined[c.Spec.Root.Path]; !ok {
		t.Fatalf("root %q, combined %v", c.Spec.Root.Path, e.f.Combined)
	}
	for _, m := range c.Spec.Mounts {
		if !runspec.RuntimeProvided(m) {
			t.Errorf("mount %s left in the guest's spec", m.Destination)
		}
	}
	last, err := e.sb.Remove(context.Background(), c)
	if !last || err != nil {
		t.Fatalf("Remove: last %v, %v", last, err)
	}
	if e.f.Total() == 0 {
		t.Fatal("the last disposable container was released")
	}
	if last, err := e.sb.Remove(context.Background(), c); last || err != nil {
		t.Fatalf("second Remove: last %v, %v", last, err)
	}
	e.end(t, "kill")
}

// What must outlive the VM is released, and the guest shuts down.
func TestKeptIsReleasedAndStopped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		keep   bool
		mounts []string
	}{
		{"keep", true, nil},
		{"writable disk", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mounts := tc.mounts
			if !tc.keep {
				disk := filepath.Join(e.tmp, "d.vhdx")
				os.WriteFile(disk, nil, 0o644)
				mounts = []string{"type=virtual-disk,source=" + disk + ",target=/d"}
			}
			c := e.add(t, "c1", tc.keep, mounts...)
			if c.Disposable {
				t.Fatal("disposable")
			}
			if last, err := e.sb.Remove(context.Background(), c); !last || err != nil {
				t.Fatalf("Remove: last %v, %v", last, err)
			}
			if n := e.f.Total(); n != 0 {
				t.Fatalf("%d references left after release", n)
			}
			if _, err := os.Stat(filepath.Join(e.tmp, "c1", layers.ScratchFile)); err != nil {
				t.Fatalf("the store's scratch went: %v", err)
			}
			e.end(t, "stop")
		})
	}
}

// A root the caller provides is not disposable: the layers are not
// mounted and the guest's root is the caller's.
func TestCallerRoot(t *testing.T) {
	e := newEnv(t)
	spec := &specs.Spec{Root: &specs.Root{Path: "/host/path", Readonly: true}}
	c, err := e.sb.Add(context.Background(), ContainerConfig{ID: "c1", Spec: spec, LayerFolders: []string{e.scratch(t, "s"), e.scratch(t, "s")}, Root: "/run/share/x"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Disposable || spec.Root.Path != "/run/share/x" || !spec.Root.Readonly || len(e.f.Combined) != 0 {
		t.Fatalf("disposable %v, root %+v, combined %v", c.Disposable, spec.Root, e.f.Combined)
	}
	e.sb.Remove(context.Background(), c)
	e.end(t, "stop")
}

// In a pod, every container but the last is released; the last decides.
func TestPodReleasesAllButLastDisposable(t *testing.T) {
	e := newEnv(t)
	a := e.add(t, "a", true)
	b := e.add(t, "b", false)
	if last, err := e.sb.Remove(context.Background(), a); last || err != nil {
		t.Fatalf("Remove a: last %v, %v", last, err)
	}
	if e.sb.Containers() != 1 {
		t.Fatalf("%d containers", e.sb.Containers())
	}
	before := e.f.Total()
	if last, err := e.sb.Remove(context.Background(), b); !last || err != nil {
		t.Fatalf("Remove b: last %v, %v", last, err)
	}
	if e.f.Total() != before {
		t.Fatal("last disposable released")
	}
	e.end(t, "kill")
}

// A failed release makes the guest shut down cleanly; the container is
// gone from the sandbox anyway.
func TestFailedReleaseStops(t *testing.T) {
	e := newEnv(t)
	a := e.add(t, "a", false)
	b := e.add(t, "b", false)
	e.f.FailRelease = filepath.Join("a", layers.ScratchFile)
	if last, err := e.sb.Remove(context.Background(), a); last || err == nil {
		t.Fatalf("Remove a: last %v, %v; want an error", last, err)
	}
	if last, err := e.sb.Remove(context.Background(), b); !last || err != nil {
		t.Fatalf("Remove b: last %v, %v", last, err)
	}
	e.end(t, "stop")
}

// A scratch Add makes goes with the container: at once when it is
// released, with the VM otherwise, and when Add fails.
func TestMadeScratchRemoved(t *testing.T) {
	e := newEnv(t)
	tpl := filepath.Join(e.tmp, "tpl")
	add := func(id string) (*Container, string, error) {
		scr := filepath.Join(e.tmp, "new-"+id)
		c, err := e.sb.Add(context.Background(), ContainerConfig{ID: id, Spec: &specs.Spec{}, LayerFolders: []string{e.base, scr}, TemplateRoot: tpl})
		return c, scr, err
	}
	gone := func(p string) {
		t.Helper()
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left: %v", p, err)
		}
	}
	e.f.FailCombine = true
	if _, scr, err := add("bad"); err == nil {
		t.Fatal("Add with a failing combine succeeded")
	} else {
		gone(scr)
	}
	e.f.FailCombine = false
	if e.sb.Containers() != 0 || e.f.Total() != 0 {
		t.Fatalf("a failed Add left %d containers, %d references", e.sb.Containers(), e.f.Total())
	}
	a, sa, err := add("a")
	if err != nil {
		t.Fatal(err)
	}
	b, sb, err := add("b")
	if err != nil {
		t.Fatal(err)
	}
	e.sb.Remove(context.Background(), a)
	gone(sa)
	e.sb.Remove(context.Background(), b)
	if _, err := os.Stat(sb); err != nil {
		t.Fatalf("the last disposable's scratch went before the VM: %v", err)
	}
	e.end(t, "kill")
	gone(sb)
}

// End with containers still in it: the guest shuts down if any of them
// is not disposable.
func TestEndWithContainers(t *testing.T) {
	e := newEnv(t)
	e.add(t, "a", false)
	e.add(t, "b", true)
	e.end(t, "stop")
	if _, err := e.sb.Add(context.Background(), ContainerConfig{ID: "c", Spec: &specs.Spec{}}); err == nil {
		t.Fatal("Add after End succeeded")
	}
}

// Concurrent Adds and Removes keep the count and the references exact.
func TestConcurrent(t *testing.T) {
	e := newEnv(t)
	keep := e.add(t, "keep", false) // holds the VM: no Remove below is the last
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			scr := filepath.Join(e.tmp, id)
			os.MkdirAll(scr, 0o755)
			os.WriteFile(filepath.Join(scr, layers.ScratchFile), nil, 0o644)
			c, err := e.sb.Add(context.Background(), ContainerConfig{ID: id, Spec: &specs.Spec{}, LayerFolders: []string{e.base, scr}})
			if err != nil {
				t.Error(err)
				return
			}
			if last, err := e.sb.Remove(context.Background(), c); last || err != nil {
				t.Errorf("Remove %s: last %v, %v", id, last, err)
			}
		}()
	}
	wg.Wait()
	if e.sb.Containers() != 1 {
		t.Fatalf("%d containers", e.sb.Containers())
	}
	if last, err := e.sb.Remove(context.Background(), keep); !last || err != nil {
		t.Fatalf("Remove keep: last %v, %v", last, err)
	}
	e.end(t, "kill")
}
