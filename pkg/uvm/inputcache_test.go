package uvm

import (
	"os"
	"path/filepath"
	"testing"
)

// The cache survives the process (a fresh cache reads the file) and a
// rewritten input misses, even with the same size and mtime.
func TestInputCache(t *testing.T) {
	root := t.TempDir()
	in := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(in, []byte("kernel one"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(in)
	calls := 0
	hash := func() (string, error) { calls++; return hashFile(in) }

	c := inputCacheFor(root)
	h1, err := c.get("sha256", in, hash)
	if err != nil || calls != 1 {
		t.Fatalf("first get: %v, %d computations", err, calls)
	}
	fresh := &inputCache{file: c.file} // another process
	if h, err := fresh.get("sha256", in, hash); err != nil || h != h1 || calls != 1 {
		t.Fatalf("cached get: %q %v, %d computations", h, err, calls)
	}

	// Same size, mtime set back: only ctime (and the content) differ.
	if err := os.WriteFile(in, []byte("kernel two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(in, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	h2, err := fresh.get("sha256", in, hash)
	if err != nil || calls != 2 || h2 == h1 {
		t.Fatalf("changed file: %q (was %q) %v, %d computations", h2, h1, err, calls)
	}
	if len(fresh.m) != 1 {
		t.Fatalf("stale entry kept: %v", fresh.m)
	}
	if _, err := fresh.get("sha256", filepath.Join(root, "missing"), hash); !os.IsNotExist(err) {
		t.Fatalf("missing input: %v", err)
	}
}
