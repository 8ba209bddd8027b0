package vhdx

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/zero"
)

// The fuzz input is a sparse file: a 4-byte length, then records of
// (4-byte offset, 2-byte length, data); everything else is zero. The
// format's fixed offsets put its structures megabytes apart, which a flat
// input could not reach cheaply. Bit 0 of the length's top byte asks the
// harness to fix the headers' and region tables' CRCs after mutation so
// the fuzzer gets past them.
const maxFuzzFile = 12 * mib

func encodeSparse(b []byte, fixCRC bool) []byte {
	n := uint32(len(b))
	if fixCRC {
		n |= 1 << 31
	}
	out := binary.LittleEndian.AppendUint32(nil, n)
	for i := 0; i < len(b); {
		if b[i] == 0 {
			i++
			continue
		}
		j := i
		for j < len(b) && j-i < 0xffff && (b[j] != 0 || (j+8 < len(b) && !zero.Is(b[j:j+8]))) {
			j++
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(i))
		out = binary.LittleEndian.AppendUint16(out, uint16(j-i))
		out = append(out, b[i:j]...)
		i = j
	}
	return out
}

func decodeSparse(in []byte) ([]byte, bool) {
	if len(in) < 4 {
		return nil, false
	}
	n := binary.LittleEndian.Uint32(in)
	fix := n&(1<<31) != 0
	size := int(n &^ (1 << 31))
	if size > maxFuzzFile {
		size = maxFuzzFile
	}
	b := make([]byte, size)
	for in = in[4:]; len(in) >= 6; {
		off, l := int(binary.LittleEndian.Uint32(in)), int(binary.LittleEndian.Uint16(in[4:]))
		in = in[6:]
		l = min(l, len(in))
		if off < size {
			copy(b[off:], in[:l])
		}
		in = in[l:]
	}
	if fix && size >= alignment {
		for _, off := range []int{header1Offset, header2Offset} {
			binary.LittleEndian.PutUint32(b[off+4:], 0)
			binary.LittleEndian.PutUint32(b[off+4:], crc(b[off:off+headerSize]))
		}
		for _, off := range []int{region1Offset, region2Offset} {
			binary.LittleEndian.PutUint32(b[off+4:], 0)
			binary.LittleEndian.PutUint32(b[off+4:], crc(b[off:off+regionTblSize]))
		}
	}
	return b, fix
}

func FuzzOpen(f *testing.F) {
	for _, typ := range []Type{Dynamic, Fixed} {
		b := sample(f, typ)
		f.Add(encodeSparse(b, false))
		f.Add(encodeSparse(b, true))
	}
	// A differencing child (opened without its parent) and a file QEMU
	// wrote with an entry in its log.
	dir := f.TempDir()
	p, _ := Create(filepath.Join(dir, "p.vhdx"), CreateOptions{Size: 4 * mib})
	p.Close()
	c, _ := Create(filepath.Join(dir, "c.vhdx"), CreateOptions{Parent: filepath.Join(dir, "p.vhdx")})
	c.WriteAt([]byte("child data"), 1000)
	c.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "c.vhdx")); err == nil {
		f.Add(encodeSparse(b, true))
	}
	if b, err := os.ReadFile("testdata/qemu-with-log.sparse"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		b, _ := decodeSparse(in)
		d, err := openBytes(b, false)
		if err != nil {
			return
		}
		defer d.Close()
		d.Info()
		d.Allocated()
		size := d.Size()
		buf := make([]byte, 64*kib)
		for _, off := range []int64{0, size / 2, max(0, size-int64(len(buf))), size - 1} {
			if _, err := d.ReadAt(buf, off); err != nil && off+int64(len(buf)) <= size {
				return // a block of a child whose parent is not open
			}
		}
		// A disk that opened must keep what is written to it.
		want := bytes.Repeat([]byte("fuzz"), 1024)
		if size < int64(len(want)) {
			return
		}
		for _, off := range []int64{0, size - int64(len(want)), size/3 + 7} {
			if _, err := d.WriteAt(want, off); err != nil {
				continue
			}
			got := make([]byte, len(want))
			if _, err := d.ReadAt(got, off); err != nil {
				continue
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read back at %d differs from what was written", off)
			}
		}
	})
}
