package vhd

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/layervisor/layervisor/internal/memfile"
)

// fixChecksums recomputes the checksums of both footers and of the header
// the footer copy points at, so the fuzzer gets past them.
func fixChecksums(b []byte) {
	if len(b) < FooterSize {
		return
	}
	for _, off := range []int{0, len(b) - FooterSize} {
		binary.BigEndian.PutUint32(b[off+64:], checksum(b[off:off+FooterSize]))
	}
	if h := binary.BigEndian.Uint64(b[16:]); len(b) >= dynHeaderSize && h <= uint64(len(b)-dynHeaderSize) {
		binary.BigEndian.PutUint32(b[h+36:], checksumAt(b[h:h+dynHeaderSize], 36))
	}
}

// The input is a whole file after a flag byte: when the flag is odd the
// harness fixes the checksums after mutation. A file that opens reads
// without error or panic; one with small blocks also keeps what is written
// to it, and stays a file that opens.
func FuzzOpenDynamic(f *testing.F) {
	// Small blocks (legal, though we do not create them) keep the seeds
	// a few KiB: the fuzzer minimizes every new input, slowly if large.
	m := &memfile.File{}
	if err := writeEmpty(m, 1<<20, 4096); err != nil {
		f.Fatal(err)
	}
	f.Add(append([]byte{0}, m.B...))
	f.Add(append([]byte{1}, m.B...))
	d, err := openMem(m, true)
	if err != nil {
		f.Fatal(err)
	}
	d.WriteAt(bytes.Repeat([]byte("seed"), 1500), 5000)
	f.Add(append([]byte{1}, m.B...))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		b := bytes.Clone(in[1:])
		if in[0]&1 == 1 {
			fixChecksums(b)
		}
		d, err := openMem(&memfile.File{B: bytes.Clone(b)}, false)
		if err != nil {
			return
		}
		size := d.Size()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, size / 2, max(0, size-int64(len(buf))), size - 1} {
			if _, err := d.ReadAt(buf, off); err != nil && err != io.EOF {
				t.Fatalf("read at %d: %v", off, err)
			}
		}
		if d.BlockSize() > 1<<20 || size < 1<<20 {
			return // keep the in-memory file small
		}
		m := &memfile.File{B: b}
		w, err := openMem(m, true)
		if err != nil {
			t.Fatalf("opens read-only but not for writing: %v", err)
		}
		want := bytes.Repeat([]byte("fuzz"), 1024)
		for _, off := range []int64{0, size - int64(len(want)), size/3 + 7} {
			if _, err := w.WriteAt(want, off); err != nil {
				t.Fatalf("write at %d: %v", off, err)
			}
		}
		r, err := openMem(m, false)
		if err != nil {
			t.Fatalf("our writes broke the file: %v", err)
		}
		got := make([]byte, len(want))
		for _, off := range []int64{0, size - int64(len(want)), size/3 + 7} {
			if _, err := r.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back at %d differs from what was written (%v)", off, err)
			}
		}
	})
}
