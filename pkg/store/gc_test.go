package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/pkg/store"
)

// gc removes the initramfs temp files that a killed run left in boot/,
// and keeps the one a live build is writing (it holds the file's lock).
func TestGCRemovesDeadBootTempFiles(t *testing.T) {
	root := t.TempDir()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(root, "boot")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		t.Fatal(err)
	}
	// Left by a killed build: nobody holds it.
	dead := filepath.Join(boot, ".tmp-initramfs-1234")
	if err := os.WriteFile(dead, []byte("half a cpio"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Being written: created and locked as the build does.
	live, err := atomicfile.CreateTemp(boot, ".tmp-initramfs-")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Discard()
	// The published initramfs is not a temp file.
	initrd := filepath.Join(boot, "initrd.img")
	if err := os.WriteFile(initrd, []byte("cpio"), 0o644); err != nil {
		t.Fatal(err)
	}

	rep, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("%s survived gc: %v", dead, err)
	}
	if !slices.Contains(rep.RemovedTemp, dead) {
		t.Errorf("gc report %v lacks %s", rep.RemovedTemp, dead)
	}
	for _, p := range []string{live.Name(), initrd} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("gc removed %s: %v", p, err)
		}
	}
	// Once the live build is done, its file is the initramfs, untouched.
	if err := live.Publish(initrd); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(initrd); err != nil {
		t.Errorf("gc after the build: %v", err)
	}
}

type pinFunc func() (map[digest.Digest]bool, error)

func (f pinFunc) PinnedLayers() (map[digest.Digest]bool, error) { return f() }

// gc keeps the layers a registered LayerPinner names (as the containerd
// snapshotter's snapshots), removes them once no pinner names them, and
// removes no layer at all while a pinner cannot say what it uses.
func TestGCKeepsPinnedLayers(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := s.Import(ctx, build(t, small("pinned:1", "a")), store.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveImage(ctx, "pinned:1"); err != nil {
		t.Fatal(err)
	}
	top := res.Image.ChainIDs[len(res.Image.ChainIDs)-1]
	s.SetPinner("snapshots", pinFunc(func() (map[digest.Digest]bool, error) { return map[digest.Digest]bool{top: true}, nil }))
	s.SetPinner("broken", pinFunc(func() (map[digest.Digest]bool, error) { return nil, errors.New("cannot tell") }))
	if rep, err := s.GC(ctx); err == nil || !strings.Contains(err.Error(), "cannot tell") || len(rep.RemovedLayers) != 0 {
		t.Fatalf("gc with a failing pinner: removed %v, %v; want nothing removed and its error", rep.RemovedLayers, err)
	}
	s.SetPinner("broken", nil)
	rep, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedLayers) != len(res.Image.ChainIDs)-1 || slices.Contains(rep.RemovedLayers, top) {
		t.Fatalf("gc removed %v, want every layer but the pinned %s", rep.RemovedLayers, top)
	}
	s.SetPinner("snapshots", nil)
	if rep, err = s.GC(ctx); err != nil || !slices.Equal(rep.RemovedLayers, []digest.Digest{top}) {
		t.Fatalf("gc once unpinned: removed %v, %v; want %s", rep.RemovedLayers, err, top)
	}
}
