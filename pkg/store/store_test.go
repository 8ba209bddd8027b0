package store_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/pkg/store"

	"github.com/layervisor/layervisor/internal/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
}

func build(t *testing.T, im imagebuild.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.tar")
	if err := im.Write(imagebuild.OCITar, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func small(name, content string) imagebuild.Image {
	return imagebuild.Image{Name: name, Layers: []imagebuild.Layer{
		{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{imagebuild.File("a", content, 0o644)}},
		{Compression: imagebuild.Zstd, Entries: []imagebuild.Entry{imagebuild.File("b", "b", 0o644)}},
		{Compression: imagebuild.None, Entries: []imagebuild.Entry{imagebuild.File("c", "c", 0o644)}},
	}}
}

func TestConcurrentImportsConvertOnce(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := build(t, small("x:1", "a"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	converted := 0
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Import(context.Background(), p, store.ImportOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			converted += res.Converted
			mu.Unlock()
		}()
	}
	wg.Wait()
	if converted != 3 {
		t.Fatalf("6 concurrent imports converted %d layers in total, want 3", converted)
	}
}

func TestNameTakenAndIdempotent(t *testing.T) {
	s, _ := store.Open(t.TempDir())
	ctx := context.Background()
	if _, err := s.Import(ctx, build(t, small("x:1", "a")), store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	other := build(t, small("x:1", "different"))
	_, err := s.Import(ctx, other, store.ImportOptions{})
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), `"x:1"`) {
		t.Fatalf("name taken: %v", err)
	}
	// Under another name it imports, sharing the unchanged layers? No: chain
	// IDs differ from the first layer on, so only new layers are made.
	res, err := s.Import(ctx, other, store.ImportOptions{Name: "x:2"})
	if err != nil || res.Converted != 3 {
		t.Fatalf("import under a new name: %+v %v", res, err)
	}
}

// A layer that fails (a device node) after good ones: nothing of the
// import remains, not even the layers converted before the failure.
func TestFailedImportLeavesNothing(t *testing.T) {
	root := t.TempDir()
	s, _ := store.Open(root)
	im := small("bad:1", "a")
	im.Layers = append(im.Layers, imagebuild.Layer{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{
		// A character device 0:0 under an ordinary name: an overlayfs layer
		// could only hold it as a whiteout, so it is refused.
		imagebuild.Raw(tar.Header{Typeflag: tar.TypeChar, Name: "dev/sda", Mode: 0o600}),
	}})
	p := build(t, im)
	_, err := s.Import(context.Background(), p, store.ImportOptions{Parallel: 1})
	if err == nil || !strings.Contains(err.Error(), "dev/sda") || !strings.Contains(err.Error(), p) {
		t.Fatalf("want error naming the entry and the archive, got %v", err)
	}
	ls, _ := s.Layers()
	ims, _ := s.Images()
	tmp, _ := os.ReadDir(filepath.Join(root, "tmp"))
	if len(ls) != 0 || len(ims) != 0 || len(tmp) != 0 {
		t.Fatalf("failed import left layers %d, images %d, temp %d", len(ls), len(ims), len(tmp))
	}
}

// A gzip layer whose stream breaks at its end (bad CRC: decoded in full by
// the decompressor running ahead in its own goroutine, which fails last)
// fails the import with an error naming the layer, and nothing remains.
func TestCorruptGzipImportLeavesNothing(t *testing.T) {
	root := t.TempDir()
	s, _ := store.Open(root)
	var big []imagebuild.Entry
	for i := 0; i < 50; i++ {
		big = append(big, imagebuild.File(fmt.Sprintf("f%02d", i), strings.Repeat("compressible ", 10000), 0o644))
	}
	im := imagebuild.Image{Name: "gz:1", Layers: []imagebuild.Layer{{Compression: imagebuild.Gzip, Entries: big}}}
	dir := filepath.Join(t.TempDir(), "oci")
	if err := im.Write(imagebuild.OCIDir, dir); err != nil {
		t.Fatal(err)
	}
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	var layer string
	for _, b := range blobs {
		if data, err := os.ReadFile(b); err == nil && len(data) > 2 && data[0] == 0x1f && data[1] == 0x8b {
			layer = b
			data[len(data)-8] ^= 1 // the CRC-32 of the gzip trailer
			if err := os.WriteFile(b, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if layer == "" {
		t.Fatal("no gzip blob in the image")
	}
	_, err := s.Import(context.Background(), dir, store.ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), filepath.Base(layer)) {
		t.Fatalf("want an error naming layer %s, got %v", filepath.Base(layer), err)
	}
	ls, _ := s.Layers()
	ims, _ := s.Images()
	tmp, _ := os.ReadDir(filepath.Join(root, "tmp"))
	if len(ls) != 0 || len(ims) != 0 || len(tmp) != 0 {
		t.Fatalf("failed import left layers %d, images %d, temp %d", len(ls), len(ims), len(tmp))
	}
	t.Logf("import: %v", err)
}

// A 100 MB file streams through import (bounded memory) and reads back
// identically through a mounted container.
func TestLargeFile(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("short")
	}
	ctx := context.Background()
	s, _ := store.Open(t.TempDir())
	const size = 100 << 20
	im := imagebuild.Image{Name: "big:1", Layers: []imagebuild.Layer{{Compression: imagebuild.Zstd, Entries: []imagebuild.Entry{
		imagebuild.Dir("data", 0o755), imagebuild.RandomFile("data/big.bin", size, 99)}}}}
	p := build(t, im)
	// The expected hash comes from the image's own tar, independently of
	// the conversion.
	want := sha256.New()
	io.Copy(want, io.LimitReader(imagebuild.NewRandom(99), size))
	if _, err := s.Import(ctx, p, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateContainer(ctx, "c", "big:1", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	defer s.RemoveContainer(ctx, "c")
	rootfs, err := s.Mount(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(rootfs, "data/big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, _ := io.Copy(got, f)
	f.Close()
	if n != size || string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatalf("big.bin differs after import (%d bytes)", n)
	}
}

// gc removes the lock files of layers that are gone (removed images and
// failed imports) and keeps those of layers that exist.
func TestGCRemovesStaleLayerLocks(t *testing.T) {
	root := t.TempDir()
	s, _ := store.Open(root)
	ctx := context.Background()
	if _, err := s.Import(ctx, build(t, small("keep:1", "a")), store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, build(t, small("drop:1", "other")), store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	locks := func() int {
		ents, err := os.ReadDir(filepath.Join(root, "layers", ".locks"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	if n := locks(); n != 6 {
		t.Fatalf("%d lock files after importing 6 layers", n)
	}
	if err := s.RemoveImage(ctx, "drop:1"); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedLayers) != 3 {
		t.Fatalf("gc removed %d layers, want 3: %+v", len(rep.RemovedLayers), rep)
	}
	if n := locks(); n != 3 {
		t.Fatalf("%d lock files after gc, want the 3 of the kept image", n)
	}
	// A stray lock (an import that failed before making its layer) goes too.
	stray := filepath.Join(root, "layers", ".locks", strings.Repeat("ab", 32))
	if err := os.WriteFile(stray, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err = s.GC(ctx); err != nil || rep.RemovedLocks != 1 {
		t.Fatalf("gc of a stray lock: %+v %v", rep, err)
	}
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stray lock still there: %v", err)
	}
	// The kept image still imports as reused (its locks work).
	res, err := s.Import(ctx, build(t, small("keep:2", "a")), store.ImportOptions{})
	if err != nil || res.Converted != 0 {
		t.Fatalf("re-import after gc: %+v %v", res, err)
	}
}
