package store_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
