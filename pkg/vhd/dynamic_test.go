package vhd

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// qemuOpts opens path with QEMU's vpc driver taking the size from the
// footer rather than from the CHS geometry.
func qemuOpts(path string) string {
	return "driver=vpc,force_size_calc=current_size,file.filename=" + path
}

// qemuRead returns the virtual content of a VHD as QEMU reads it.
func qemuRead(t *testing.T, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	testutil.Run(t, "qemu-img", "convert", "--image-opts", qemuOpts(path), "-O", "raw", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// qemuCheck runs `qemu-img check`, which QEMU's vpc driver may not support
// (7.2 does not); when it does, the file must pass.
func qemuCheck(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command(testutil.NeedTool(t, "qemu-img"), "check", "-f", "vpc", path).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "does not support checks") {
		t.Errorf("qemu-img check %s: %v\n%s", path, err, out)
	}
}

// pyvhdiRead reads a VHD through libvhdi's Python binding.
const pyvhdiRead = `
import sys, pyvhdi
f = pyvhdi.file(); f.open(sys.argv[1])
size = f.get_media_size()
with open(sys.argv[2], "wb") as out:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        out.write(f.read_buffer_at_offset(n, off))
        off += n
`

// libvhdiRead returns the virtual content of path as libvhdi reads it.
// Debian's binding is for the system python3.
func libvhdiRead(t *testing.T, path string) []byte {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import pyvhdi").Run(); err != nil {
		testutil.NeedTool(t, "python3-libvhdi (import pyvhdi in "+py+")")
	}
	dir := t.TempDir()
	script, out := filepath.Join(dir, "read.py"), filepath.Join(dir, "libvhdi.raw")
	if err := os.WriteFile(script, []byte(pyvhdiRead), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, py, script, path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readAll(t *testing.T, r interface {
	io.ReaderAt
	Size() int64
}) []byte {
	t.Helper()
	b := make([]byte, r.Size())
	if n, err := r.ReadAt(b, 0); n != len(b) {
		t.Fatalf("read %d of %d bytes: %v", n, len(b), err)
	}
	return b
}

// writeRandom makes n writes of 1 to maxLen bytes at random offsets (so
// unaligned, partial sectors, across blocks; one in four all zeros) to w
// and to mirror.
func writeRandom(t *testing.T, rng *rand.Rand, w io.WriterAt, mirror []byte, n, maxLen int) {
	t.Helper()
	for range n {
		l := 1 + rng.IntN(min(maxLen, len(mirror)))
		off := rng.Int64N(int64(len(mirror) - l + 1))
		b := make([]byte, l)
		if rng.IntN(4) != 0 {
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
		}
		if _, err := w.WriteAt(b, off); err != nil {
			t.Fatalf("write %d bytes at %d: %v", l, off, err)
		}
		copy(mirror[off:], b)
	}
}

// New dynamic VHDs of several sizes (one not a multiple of the block size,
// the largest allowed) and block sizes are what QEMU and libvhdi expect:
// the exact size (taken from the footer), the block size, and a file of
// just the headers.
func TestCreateDynamicValidators(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ size, block int64 }{
		{64 << 20, 0}, {3<<20 + 7*512, 512 << 10}, {100<<20 + 512, 2 << 20},
		{40 << 20, 16 << 20}, {1 << 30, 256 << 20}, {MaxDynamicSize, 0},
	} {
		p := filepath.Join(dir, fmt.Sprintf("d-%d-%d.vhd", tc.size, tc.block))
		d, err := CreateDynamic(p, tc.size, DynamicOptions{BlockSize: tc.block})
		if err != nil {
			t.Fatal(err)
		}
		bs := cmp.Or(tc.block, DefaultBlockSize)
		if d.Size() != tc.size || d.BlockSize() != bs || d.AllocatedBlocks() != 0 {
			t.Errorf("%s: size %d block %d allocated %d", p, d.Size(), d.BlockSize(), d.AllocatedBlocks())
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(p)
		if want := 3*512 + alignUp(4*((tc.size+bs-1)/bs), 512) + 512; st.Size() != want {
			t.Errorf("%s: %d bytes, want %d", p, st.Size(), want)
		}
		if err := CheckFile(p); err != nil {
			t.Error(err)
		}
		qemuCheck(t, p)
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
			ClusterSize int64 `json:"cluster-size"`
		}
		out := testutil.Run(t, "qemu-img", "info", "--output=json", "--image-opts", qemuOpts(p))
		if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize != tc.size || info.ClusterSize != bs {
			t.Errorf("%s: qemu-img info says %+v (%v), want size %d block %d", p, info, err, tc.size, bs)
		}
		vi := string(testutil.Run(t, "vhdiinfo", p))
		if !strings.Contains(vi, "Dynamic") || !strings.Contains(vi, fmt.Sprintf("(%d bytes)", tc.size)) {
			t.Errorf("%s: vhdiinfo:\n%s", p, vi)
		}
	}
}

// Bad sizes and block sizes are refused before anything is written.
func TestCreateDynamicRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		size, block int64
		want        string
	}{
		{0, 0, "positive multiple of 512"},
		{1000, 0, "positive multiple of 512"},
		{MaxDynamicSize + 512, 0, "2040 GiB"},
		{64 << 20, 256 << 10, "block size"},
		{64 << 20, 3 << 20, "block size"},
		{64 << 20, 512 << 20, "block size"},
	} {
		p := filepath.Join(dir, "x.vhd")
		_, err := CreateDynamic(p, tc.size, DynamicOptions{BlockSize: tc.block})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("size %d block %d: %v, want an error naming %s and %q", tc.size, tc.block, err, p, tc.want)
		}
	}
	p := filepath.Join(dir, "exists.vhd")
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := CreateDynamic(p, 1<<20, DynamicOptions{}); !errors.Is(err, os.ErrExist) {
		t.Errorf("create over an existing file: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("failed creates left %d files", len(ents)-1)
	}
}

// What WriteAt writes (random offsets and lengths, partial sectors, across
// blocks, the last byte) reads back the same through us, QEMU and libvhdi,
// also after reopening and writing more; zeros do not allocate.
func TestDynamicWriteReadBack(t *testing.T) {
	for _, tc := range []struct{ size, block int64 }{{7<<20 + 3*512, 512 << 10}, {9 << 20, 2 << 20}} {
		t.Run(fmt.Sprint(tc.block), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "d.vhd")
			d, err := CreateDynamic(p, tc.size, DynamicOptions{BlockSize: tc.block})
			if err != nil {
				t.Fatal(err)
			}
			st0, _ := os.Stat(p)
			if _, err := d.WriteAt(make([]byte, 3*tc.block/2), 12345); err != nil {
				t.Fatal(err)
			}
			if st, _ := os.Stat(p); d.AllocatedBlocks() != 0 || st.Size() != st0.Size() {
				t.Errorf("zeros allocated %d blocks, file %d → %d bytes", d.AllocatedBlocks(), st0.Size(), st.Size())
			}
			mirror := make([]byte, tc.size)
			rng := rand.New(rand.NewPCG(1, uint64(tc.block)))
			writeRandom(t, rng, d, mirror, 30, int(tc.block*3/2))
			for _, w := range []struct {
				off int64
				n   int
			}{{tc.size - 1, 1}, {tc.block - 100, 200}, {0, 1}} {
				b := bytes.Repeat([]byte{0xa5}, w.n)
				if _, err := d.WriteAt(b, w.off); err != nil {
					t.Fatal(err)
				}
				copy(mirror[w.off:], b)
			}
			if _, err := d.WriteAt([]byte{1}, tc.size); err == nil {
				t.Error("a write past the end succeeded")
			}
			if !bytes.Equal(readAll(t, d), mirror) {
				t.Fatal("our reader differs from what was written")
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			verify := func() {
				t.Helper()
				if err := CheckFile(p); err != nil {
					t.Error(err)
				}
				qemuCheck(t, p)
				if !bytes.Equal(qemuRead(t, p), mirror) {
					t.Error("QEMU reads other content")
				}
				if !bytes.Equal(libvhdiRead(t, p), mirror) {
					t.Error("libvhdi reads other content")
				}
			}
			verify()
			d, err = OpenDynamicRW(p)
			if err != nil {
				t.Fatal(err)
			}
			writeRandom(t, rng, d, mirror, 10, int(tc.block))
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			verify()
			r, err := OpenDynamic(p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if !bytes.Equal(readAll(t, r), mirror) {
				t.Error("after reopening our reader differs")
			}
			if _, err := r.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
				t.Errorf("write through OpenDynamic: %v", err)
			}
		})
	}
}

// A dynamic VHD that QEMU created and wrote reads the same through us; we
// can write into it, and QEMU reads our writes, and we read its later ones.
func TestQemuWrittenDynamic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "q.vhd")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic", p, "20M")
	testutil.Run(t, "qemu-io", "-f", "vpc", "-c", "write -P 0xab 1M 3M", "-c", "write -P 0x5c 17M 4k", p)
	mirror := qemuRead(t, p)
	d, err := OpenDynamicRW(p)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != int64(len(mirror)) || !bytes.Equal(readAll(t, d), mirror) {
		t.Fatal("we read QEMU's file differently from QEMU")
	}
	if mirror[1<<20] != 0xab || mirror[17<<20] != 0x5c {
		t.Fatal("QEMU's writes are not where they were made")
	}
	writeRandom(t, rand.New(rand.NewPCG(5, 6)), d, mirror, 30, 3<<20)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(qemuRead(t, p), mirror) {
		t.Fatal("QEMU reads our writes into its file differently")
	}
	// QEMU allocates after our blocks and we read what it wrote.
	testutil.Run(t, "qemu-io", "--image-opts", "-c", "write -P 0x77 6M 2M", qemuOpts(p))
	copy(mirror[6<<20:], bytes.Repeat([]byte{0x77}, 2<<20))
	r, err := OpenDynamic(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !bytes.Equal(readAll(t, r), mirror) {
		t.Fatal("we read QEMU's later writes differently")
	}
	if err := CheckFile(p); err != nil {
		t.Error(err)
	}
}

// Concurrent readers and writers (run with -race): each writer owns a
// region; at the end every region holds what its writer wrote.
func TestDynamicConcurrent(t *testing.T) {
	const size, region = 8 << 20, 1 << 20
	d, err := CreateDynamic(filepath.Join(t.TempDir(), "c.vhd"), size, DynamicOptions{BlockSize: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mirror := make([]byte, size)
	var wg sync.WaitGroup
	for w := range size / region {
		wg.Add(2)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			writeRandom(t, rng, io.NewOffsetWriter(d, int64(w*region)), mirror[w*region:(w+1)*region], 20, 200<<10)
		}()
		go func() {
			defer wg.Done()
			b := make([]byte, 300<<10)
			for i := range 20 {
				if _, err := d.ReadAt(b, int64(i)*(size-int64(len(b)))/20); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if !bytes.Equal(readAll(t, d), mirror) {
		t.Fatal("concurrent writes lost data")
	}
}
