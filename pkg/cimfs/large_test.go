package cimfs

import (
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestLargeFileStreams adds a 200 MB file and checks the writer's
// allocations stay far below its size: content goes straight to disk.
func TestLargeFileStreams(t *testing.T) {
	const size = 200 << 20
	src := filepath.Join(t.TempDir(), "src")
	f, err := os.Create(src)
	must(t, err)
	must(t, f.Truncate(size))
	_, err = f.WriteAt([]byte("the end"), size-7)
	must(t, err)
	_, err = f.Seek(0, io.SeekStart)
	must(t, err)
	defer f.Close()

	dir := t.TempDir()
	w, err := Create(dir, "big.cim", nil)
	must(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	must(t, w.Add("big", FileInfo{}, f))
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("Add allocated %d bytes for a %d-byte file", alloc, size)
	}
	mustCommit(t, w)

	img := mustOpen(t, filepath.Join(dir, "big.cim"))
	r, err := img.Open("big")
	must(t, err)
	if r.Size() != size {
		t.Fatalf("size %d", r.Size())
	}
	h1, h2 := sha256.New(), sha256.New()
	_, err = io.Copy(h1, r)
	must(t, err)
	_, err = f.Seek(0, io.SeekStart)
	must(t, err)
	_, err = io.Copy(h2, f)
	must(t, err)
	if string(h1.Sum(nil)) != string(h2.Sum(nil)) {
		t.Error("content read back differs from the source")
	}
}
