package layers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// An unreadable state file (empty, truncated, garbage: what a power cut
// could leave before the state was fsynced) blocks mount and unmount with
// an error that says how to recover, and gc (Reconcile) recovers: it
// rebuilds the state from the kernel's mount table, so mounted containers
// stay mounted, known and unmountable, with their shared mounts counted;
// it keeps the bad file aside.
func TestHostCorruptStateRecovers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(good []byte) []byte
	}{
		{"empty", func([]byte) []byte { return nil }},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"garbage", func([]byte) []byte { return []byte("\x00\x00\x00\x00") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			s1 := makeScratch(t, filepath.Join(f.root, "c1"))
			s2 := makeScratch(t, filepath.Join(f.root, "c2"))
			r1, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.host.Mount(ctx, "c2", Layers{ReadOnly: []string{f.base}, Scratch: s2}); err != nil {
				t.Fatal(err)
			}
			good, err := os.ReadFile(f.host.statePath())
			if err != nil {
				t.Fatal(err)
			}
			bad := tc.corrupt(good)
			if err := os.WriteFile(f.host.statePath(), bad, 0o600); err != nil {
				t.Fatal(err)
			}
			s3 := makeScratch(t, filepath.Join(f.root, "c3"))
			_, err = f.host.Mount(ctx, "c3", Layers{ReadOnly: []string{f.base}, Scratch: s3})
			if err == nil || !strings.Contains(err.Error(), f.host.statePath()) || !strings.Contains(err.Error(), "layervisor gc") {
				t.Errorf("mount with a corrupt state: %v, want an error naming the file and gc", err)
			}

			rep, err := f.host.Reconcile(ctx, f.root)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.Kept, []string{"c1", "c2"}) || len(rep.RolledBack) != 0 || len(rep.Unmounted) != 0 {
				t.Fatalf("reconcile of a corrupt state: %+v, want c1 and c2 kept, nothing undone", rep)
			}
			if kept, err := os.ReadFile(f.host.statePath() + ".corrupt"); err != nil || string(kept) != string(bad) {
				t.Errorf("the corrupt file was not kept aside: %q, %v", kept, err)
			}
			if got := read(t, filepath.Join(r1, "etc/os-release")); got != "top\n" {
				t.Errorf("c1's root file system reads %q after the recovery", got)
			}
			// The shared base layer is counted for both containers.
			refs, err := f.host.Refs(layerImage(f.base))
			if err != nil || !slices.Equal(refs, []string{"c1", "c2"}) {
				t.Errorf("base layer users after the recovery: %v, %v; want c1, c2", refs, err)
			}
			if !f.host.IsMounted("c1") || !f.host.IsMounted("c2") {
				t.Errorf("containers not known as mounted after the recovery")
			}
			if _, err := f.host.Mount(ctx, "c3", Layers{ReadOnly: []string{f.base}, Scratch: s3}); err != nil {
				t.Fatalf("mount after the recovery: %v", err)
			}
			for _, id := range []string{"c1", "c3", "c2"} {
				if err := f.host.Unmount(ctx, id, UnmountAll); err != nil {
					t.Errorf("unmount %s after the recovery: %v", id, err)
				}
			}
		})
	}
}

// A mount point with something already mounted on it is never mounted
// over: MountImage refuses, and a container's Mount reuses a shared mount
// only if the kernel says it holds the same image.
func TestMountpointInUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	mp := filepath.Join(f.root, "mp")
	if err := MountImage(layerImage(f.base), mp, true); err != nil {
		t.Fatal(err)
	}
	defer Unmount(mp)
	if img, isMount, err := MountedImage(mp); err != nil || !isMount || img != layerImage(f.base) {
		t.Fatalf("MountedImage(%s) = %q, %v, %v", mp, img, isMount, err)
	}
	if err := MountImage(layerImage(f.top), mp, true); !errors.Is(err, ErrMountpointInUse) {
		t.Fatalf("second mount on %s: %v, want %v", mp, err, ErrMountpointInUse)
	}
	if img, _, _ := MountedImage(mp); img != layerImage(f.base) {
		t.Errorf("%s holds %s after the refused mount", mp, img)
	}

	// Another image where a container's shared layer mount goes.
	top, err := filepath.EvalSymlinks(layerImage(f.top))
	if err != nil {
		t.Fatal(err)
	}
	shared := f.host.shortMountpoint(top)
	if err := MountImage(layerImage(f.base), shared, true); err != nil {
		t.Fatal(err)
	}
	defer Unmount(shared)
	s := makeScratch(t, filepath.Join(f.root, "c1"))
	if _, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s}); !errors.Is(err, ErrMountpointInUse) {
		t.Fatalf("mount over a foreign shared mount: %v, want %v", err, ErrMountpointInUse)
	}
	if img, _, _ := MountedImage(shared); img != layerImage(f.base) {
		t.Errorf("shared mount point holds %s after the refused mount", img)
	}
}
