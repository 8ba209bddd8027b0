package uvm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A writer far past the cap leaves at most the cap in the log and at most
// the cap in its one rotated file, and the log ends with the latest bytes,
// also when one write alone is larger than the cap and when the log is
// reopened.
func TestCappedFile(t *testing.T) {
	const max = 1000
	path := filepath.Join(t.TempDir(), "console.log")
	check := func() {
		t.Helper()
		var total int64
		for _, p := range []string{path, path + ".1"} {
			st, err := os.Stat(p)
			if err != nil {
				continue
			}
			if st.Size() > max {
				t.Fatalf("%s: %d bytes, cap %d", filepath.Base(p), st.Size(), max)
			}
			total += st.Size()
		}
		if total > 2*max {
			t.Fatalf("%d bytes on disk, cap 2*%d", total, max)
		}
		if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) > 2 {
			t.Fatalf("%d files, want the log and one rotated file", len(ents))
		}
	}
	c, err := openCappedFile(path, max)
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for i := 0; i < 200; i++ {
		p := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i*7%300)
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		last = p
		check()
	}
	big := append(bytes.Repeat([]byte("old"), 2*max), bytes.Repeat([]byte("N"), max)...)
	if n, err := c.Write(big); err != nil || n != len(big) {
		t.Fatalf("big write: %d, %v", n, err)
	}
	check()
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b, bytes.Repeat([]byte("N"), max)) {
		t.Fatalf("after a write larger than the cap the log holds %q…, want its last %d bytes", b[:min(20, len(b))], max)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened (a later process stopping the UVM): the size on disk counts.
	c, err = openCappedFile(path, max)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(last); err != nil {
		t.Fatal(err)
	}
	check()
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, last) {
		t.Fatal("the log does not end with the latest write")
	}
}

// QEMU's stderr is kept in memory: its first and last bytes, however much
// it writes.
func TestHeadTail(t *testing.T) {
	const keep = 100
	h := newHeadTail(keep)
	h.Write([]byte("qemu-system-x86_64: started\n"))
	for i := 0; i < 1000; i++ {
		h.Write([]byte(strings.Repeat("noise ", 10) + "\n"))
	}
	h.Write([]byte("the end\n"))
	s := h.String()
	if !strings.HasPrefix(s, "qemu-system-x86_64: started\n") || !strings.HasSuffix(s, "the end\n") || !strings.Contains(s, "bytes not kept") {
		t.Fatalf("kept %q", s)
	}
	if len(s) > 2*keep+50 {
		t.Fatalf("kept %d bytes of stderr, want about %d", len(s), 2*keep)
	}
	h.mu.Lock()
	held := cap(h.head) + cap(h.tail)
	h.mu.Unlock()
	if held > 8*keep {
		t.Fatalf("holds %d bytes of buffers for %d kept", held, 2*keep)
	}
	short := newHeadTail(keep)
	short.Write([]byte("short\n"))
	if short.String() != "short\n" {
		t.Fatalf("short stderr: %q", short.String())
	}
}
