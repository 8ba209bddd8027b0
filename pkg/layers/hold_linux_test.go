package layers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// attached counts the loop devices backed by the layer image of folder
// (testutil.LoopDevices).
func attached(t *testing.T, folder string, want int) int {
	t.Helper()
	return testutil.LoopDevices(t, layerImage(folder), want)
}

// mountC1 mounts container c1 of the layer folders ro on a new scratch.
func (f *fixture) mountC1(t *testing.T, ro ...string) (rootfs, scratch string) {
	t.Helper()
	scratch = makeScratch(t, filepath.Join(f.root, "c1"))
	rootfs, err := f.host.Mount(context.Background(), "c1", Layers{ReadOnly: ro, Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	return rootfs, scratch
}

func refsOf(t *testing.T, h *Host, folder string) []string {
	t.Helper()
	r, err := h.Refs(layerImage(folder))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A holder and a container using one layer image share one mount (one
// loop device); it stays while either uses it; a layer cannot be a
// container's scratch as well.
func TestHoldSharesContainerMounts(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r1, s1 := f.mountC1(t, f.top, f.base)
	mp, err := f.host.Hold(ctx, "snap", layerImage(f.base))
	if err != nil {
		t.Fatal(err)
	}
	if img, isMount, _ := MountedImage(mp); !isMount || img != layerImage(f.base) {
		t.Fatalf("held mount %s holds %q", mp, img)
	}
	if n := attached(t, f.base, 1); n != 1 {
		t.Errorf("base attached %d times, want 1", n)
	}
	if got := refsOf(t, f.host, f.base); !slices.Equal(got, []string{"c1", "holder/snap"}) {
		t.Errorf("base users %v", got)
	}
	if again, err := f.host.Hold(ctx, "snap", layerImage(f.base)); err != nil || again != mp {
		t.Errorf("holding again: %s, %v; want %s", again, err, mp)
	}
	if got := refsOf(t, f.host, f.base); len(got) != 2 {
		t.Errorf("a second hold counted: %v", got)
	}
	// A held layer is no scratch, nor a scratch a layer.
	if _, err := f.host.Hold(ctx, "snap", filepath.Join(s1, ScratchFile)); err == nil || !strings.Contains(err.Error(), "scratch") {
		t.Errorf("holding a container's scratch: %v", err)
	}

	// The container goes: the holder keeps the mount.
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(f.root, "bad")
	os.MkdirAll(bad, 0o755)
	if err := os.Symlink(layerImage(f.base), filepath.Join(bad, ScratchFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.host.Mount(ctx, "c2", Layers{ReadOnly: []string{f.top}, Scratch: bad}); err == nil || !strings.Contains(err.Error(), "held as a layer") {
		t.Errorf("a held layer as a scratch: %v", err)
	}
	if n := attached(t, f.base, 1); n != 1 {
		t.Errorf("base attached %d times after the container went, want 1", n)
	}
	if n := attached(t, f.top, 0); n != 0 {
		t.Errorf("top attached %d times after its only user went", n)
	}
	if _, err := os.Stat(filepath.Join(mp, "content", "keep")); err != nil {
		t.Errorf("held mount unusable: %v", err)
	}
	// And the other way round.
	if r1, err = f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s1}); err != nil {
		t.Fatal(err)
	}
	if err := f.host.Release(ctx, "snap", layerImage(f.base)); err != nil {
		t.Fatal(err)
	}
	if err := f.host.Release(ctx, "snap", layerImage(f.base)); err != nil {
		t.Errorf("a second release: %v", err)
	}
	if got := read(t, filepath.Join(r1, "keep")); got != "kept\n" {
		t.Errorf("container broken after the holder went: %q", got)
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if n := attached(t, f.base, 0); n != 0 {
		t.Errorf("base attached %d times after everyone went", n)
	}
}

// Two images whose short mount names collide (a client can craft that):
// the second gets the full name, which a container then shares and a
// restart keeps.
func TestHoldShortNameTaken(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	base, err := filepath.EvalSymlinks(layerImage(f.base))
	if err != nil {
		t.Fatal(err)
	}
	// Another image recorded at base's short name, held.
	other := filepath.Join(f.root, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	copyLayer(t, f.top, other)
	otherImg, _ := filepath.EvalSymlinks(layerImage(other))
	lk, err := f.host.lock()
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.host.load()
	if err != nil {
		t.Fatal(err)
	}
	st.Holders["x"] = []string{otherImg}
	st.Mounts[otherImg] = f.host.shortMountpoint(base)
	if err := f.host.save(st); err != nil {
		t.Fatal(err)
	}
	lk.Release()
	if _, err := f.host.Hold(ctx, "x", otherImg); err != nil {
		t.Fatal(err)
	}

	mp, err := f.host.Hold(ctx, "snap", base)
	if err != nil {
		t.Fatal(err)
	}
	if mp != f.host.fullMountpoint(base) {
		t.Fatalf("second image of a short name mounted at %s, want %s", mp, f.host.fullMountpoint(base))
	}
	for at, want := range map[string]string{mp: base, f.host.shortMountpoint(base): otherImg} {
		if img, _, _ := MountedImage(at); img != want {
			t.Errorf("%s holds %q, want %s", at, img, want)
		}
	}
	s1 := makeScratch(t, filepath.Join(f.root, "c1"))
	r1, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.base}, Scratch: s1})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(r1, "etc/os-release")); got != "base\n" {
		t.Errorf("container over the full-name mount reads %q", got)
	}
	if n := attached(t, f.base, 1); n != 1 {
		t.Errorf("base attached %d times, want 1", n)
	}
	// A restart (a new Host on the same state) finds each where it was.
	h2 := &Host{StateDir: f.host.StateDir}
	if again, err := h2.Hold(ctx, "snap", base); err != nil || again != mp {
		t.Errorf("after a restart: %s, %v; want %s", again, err, mp)
	}
	if _, err := h2.Reconcile(ctx, f.root); err != nil {
		t.Fatal(err)
	}
	if img, _, _ := MountedImage(mp); img != base {
		t.Errorf("reconcile lost the full-name mount (%q)", img)
	}
	if err := h2.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	for _, held := range [][2]string{{"snap", base}, {"x", otherImg}} {
		if err := h2.Release(ctx, held[0], held[1]); err != nil {
			t.Fatal(err)
		}
	}
}

func copyLayer(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(layerImage(from))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(layerImage(to), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// SetHeld makes a holder hold exactly what it says, mounting what a crash
// (a hold recorded, its mount never made) left missing; gc keeps holds.
func TestSetHeld(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	mps, err := f.host.SetHeld(ctx, "snap", []string{layerImage(f.top), layerImage(f.base), layerImage(f.top)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(mps) != 3 || mps[0] == "" || mps[0] != mps[2] || mps[1] == "" {
		t.Fatalf("SetHeld mount points %v", mps)
	}
	if got := refsOf(t, f.host, f.top); !slices.Equal(got, []string{"holder/snap"}) {
		t.Errorf("top users %v", got)
	}
	rep, err := f.host.Reconcile(ctx, f.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unmounted) != 0 || len(rep.Detached) != 0 {
		t.Errorf("gc undid holds: %+v", rep)
	}
	if n := attached(t, f.top, 1) + attached(t, f.base, 1); n != 2 {
		t.Errorf("%d loop devices after gc, want 2", n)
	}
	if _, err := f.host.SetHeld(ctx, "snap", []string{layerImage(f.base)}, ""); err != nil {
		t.Fatal(err)
	}
	if n := attached(t, f.top, 0); n != 0 {
		t.Errorf("top attached %d times after it was let go", n)
	}
	// A crash between a hold's intent and its mount.
	if err := Unmount(mps[1]); err != nil {
		t.Fatal(err)
	}
	if got, err := f.host.SetHeld(ctx, "snap", []string{layerImage(f.base)}, ""); err != nil || got[0] != mps[1] {
		t.Fatalf("SetHeld after a lost mount: %v, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(mps[1], "content", "keep")); err != nil {
		t.Errorf("lost mount not mounted again: %v", err)
	}
	if _, err := f.host.SetHeld(ctx, "snap", nil, ""); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.host.statePath())
	if err != nil {
		t.Fatal(err)
	}
	var st hostState
	if err := json.Unmarshal(b, &st); err != nil || len(st.Holders) != 0 || len(st.Mounts) != 0 {
		t.Errorf("state after every hold went: %s (%v)", b, err)
	}
}

// A state file of an older version (no holds, no mount entries: every
// shared mount at its short name) keeps working: its containers unmount,
// share their mounts with holders, and gc keeps them.
func TestHostStateOfOlderVersion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r1, _ := f.mountC1(t, f.top, f.base)
	b, err := os.ReadFile(f.host.statePath())
	if err != nil {
		t.Fatal(err)
	}
	var old map[string]json.RawMessage
	if err := json.Unmarshal(b, &old); err != nil {
		t.Fatal(err)
	}
	delete(old, "mounts")
	delete(old, "holders")
	if b, err = json.Marshal(old); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.host.statePath(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := f.host.Reconcile(ctx, f.root)
	if err != nil || !slices.Equal(rep.Kept, []string{"c1"}) || len(rep.Unmounted) != 0 {
		t.Fatalf("gc of an old state: %+v, %v", rep, err)
	}
	if _, err := f.host.Hold(ctx, "snap", layerImage(f.base)); err != nil {
		t.Fatal(err)
	}
	if n := attached(t, f.base, 1); n != 1 {
		t.Errorf("base attached %d times, want 1", n)
	}
	if got := read(t, filepath.Join(r1, "etc/os-release")); got != "top\n" {
		t.Errorf("c1 reads %q", got)
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if err := f.host.Release(ctx, "snap", layerImage(f.base)); err != nil {
		t.Fatal(err)
	}
}
