package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// writeRandom makes n writes of random data (lengths up to max, offsets
// anywhere, some unaligned) to both w and the mirror.
func writeRandom(t *testing.T, rng *rand.Rand, d *Disk, mirror []byte, n, maxLen int, aligned bool) {
	t.Helper()
	for i := 0; i < n; i++ {
		l := 1 + rng.IntN(maxLen)
		off := rng.Int64N(int64(len(mirror) - l))
		if aligned {
			l = (l + 511) / 512 * 512
			off = off / 512 * 512
			if off+int64(l) > int64(len(mirror)) {
				off = int64(len(mirror) - l)
			}
		}
		b := make([]byte, l)
		for j := range b {
			b[j] = byte(rng.IntN(250) + 1)
		}
		if _, err := d.WriteAt(b, off); err != nil {
			t.Fatalf("write %d bytes at %d: %v", l, off, err)
		}
		copy(mirror[off:], b)
	}
}

func readAll(t *testing.T, d *Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(b, 0); err != nil || n != len(b) {
		t.Fatalf("read whole disk: %d bytes, %v", n, err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Files we write pass qemu-img check and read back, through QEMU, exactly
// what we wrote; reopened, they read the same through our reader.
func TestCreateWriteValidatedByQemu(t *testing.T) {
	for _, tc := range []struct {
		typ          Type
		block, lsect int64
		size         int64
	}{
		{Dynamic, 1 * mib, 512, 64 * mib},
		{Dynamic, 1 * mib, 4096, 40*mib + 4096},
		{Dynamic, 32 * mib, 512, 100 * mib},
		{Dynamic, 256 * mib, 512, 300 * mib},
		{Fixed, 1 * mib, 512, 24 * mib},
		{Fixed, 8 * mib, 4096, 30 * mib},
	} {
		name := fmt.Sprintf("%s-block%dM-sector%d-size%d", tc.typ, tc.block/mib, tc.lsect, tc.size)
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "d.vhdx")
			d, err := Create(path, CreateOptions{Size: tc.size, Type: tc.typ, BlockSize: tc.block, LogicalSectorSize: tc.lsect})
			if err != nil {
				t.Fatal(err)
			}
			mirror := make([]byte, tc.size)
			writeRandom(t, rand.New(rand.NewPCG(1, uint64(tc.block))), d, mirror, 60, 300*1024, false)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.lsect == 512 {
				raw := filepath.Join(dir, "d.raw")
				writeFile(t, raw, mirror)
				testutil.Run(t, "qemu-img", "check", "-f", "vhdx", path)
				testutil.Run(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", path, raw)
				info := string(testutil.Run(t, "qemu-img", "info", "--output=json", "-f", "vhdx", path))
				if !strings.Contains(info, fmt.Sprintf(`"virtual-size": %d`, tc.size)) {
					t.Errorf("qemu-img info does not report size %d:\n%s", tc.size, info)
				}
			} else if got := libvhdiRead(t, path, ""); !bytes.Equal(got, mirror) {
				// QEMU's vhdx driver refuses 4096-byte logical sectors.
				t.Fatal("libvhdi reads a 4096-sector disk differently from what we wrote")
			}
			d, err = Open(path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if !bytes.Equal(readAll(t, d), mirror) {
				t.Fatal("reopened disk differs from what was written")
			}
			if in := d.Info(); in.Type != tc.typ || in.LogicalSectorSize != tc.lsect || in.BlockSize != tc.block {
				t.Errorf("info %+v does not match the options", in)
			}
		})
	}
}

// Files QEMU writes (its own layout, block sizes and log) read through us
// as QEMU reads them.
func TestReadQemuWritten(t *testing.T) {
	for _, opts := range []string{"subformat=dynamic", "subformat=fixed", "subformat=dynamic,block_size=8M", "subformat=dynamic,log_size=4M,block_state_zero=off"} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "q.vhdx")
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "vhdx", "-o", opts, path, "48M")
			testutil.Run(t, "qemu-io", "-f", "vhdx",
				"-c", "write -P 0xab 0 64k", "-c", "write -P 0x11 5M 4k", "-c", "write -P 0x5a 9437000 70000",
				"-c", "write -z 5M 512", "-c", "write -P 0x77 47M 1M", path)
			raw := filepath.Join(dir, "q.raw")
			testutil.Run(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
			want, err := os.ReadFile(raw)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Open(path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if !bytes.Equal(readAll(t, d), want) {
				t.Fatal("our read of QEMU's file differs from qemu-img convert's")
			}
		})
	}
}

// pyvhdiRead reads a disk through libvhdi's Python binding, a parent
// attached with set_parent, and writes the content to a file.
const pyvhdiRead = `
import sys, pyvhdi
child = pyvhdi.file(); child.open(sys.argv[1])
if sys.argv[2]:
    parent = pyvhdi.file(); parent.open(sys.argv[2]); child.set_parent(parent)
size = child.get_media_size()
with open(sys.argv[3], "wb") as out:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        out.write(child.read_buffer_at_offset(n, off))
        off += n
`

// libvhdiRead returns the virtual content of path (with parent, if not
// empty) as libvhdi reads it. Debian's binding is for the system python3.
func libvhdiRead(t *testing.T, path, parent string) []byte {
	t.Helper()
	dir := t.TempDir()
	script, out := filepath.Join(dir, "read.py"), filepath.Join(dir, "libvhdi.raw")
	writeFile(t, script, []byte(pyvhdiRead))
	testutil.Run(t, systemPython(t), script, path, parent, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func systemPython(t *testing.T) string {
	t.Helper()
	const p = "/usr/bin/python3"
	if err := exec.Command(p, "-c", "import pyvhdi").Run(); err != nil {
		testutil.NeedTool(t, "python3-libvhdi (import pyvhdi in "+p+")")
	}
	return p
}

// A differencing child (unaligned and partial-sector writes, blocks
// partially and fully overwritten) reads the same through libvhdi as
// through us; vhdiinfo names the parent linkage.
func TestDifferencingMatchesLibvhdi(t *testing.T) {
	for _, lsect := range []int64{512, 4096} {
		t.Run(fmt.Sprint("sector", lsect), func(t *testing.T) {
			dir := t.TempDir()
			parentPath, childPath := filepath.Join(dir, "base.vhdx"), filepath.Join(dir, "child.vhdx")
			const size = 32 * mib
			p, err := Create(parentPath, CreateOptions{Size: size, LogicalSectorSize: lsect})
			if err != nil {
				t.Fatal(err)
			}
			mirror := make([]byte, size)
			rng := rand.New(rand.NewPCG(7, uint64(lsect)))
			writeRandom(t, rng, p, mirror, 40, 200*1024, false)
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			c, err := Create(childPath, CreateOptions{Parent: parentPath})
			if err != nil {
				t.Fatal(err)
			}
			writeRandom(t, rng, c, mirror, 40, 100*1024, false)
			// A whole block and a single byte.
			whole := bytes.Repeat([]byte{0xee}, mib)
			if _, err := c.WriteAt(whole, 3*mib); err != nil {
				t.Fatal(err)
			}
			copy(mirror[3*mib:], whole)
			if _, err := c.WriteAt([]byte{0x42}, 20*mib+1234); err != nil {
				t.Fatal(err)
			}
			mirror[20*mib+1234] = 0x42
			if !bytes.Equal(readAll(t, c), mirror) {
				t.Fatal("child reads differ from the mirror before close")
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			info := string(testutil.Run(t, "vhdiinfo", childPath))
			pd, _ := Open(parentPath, OpenOptions{ReadOnly: true})
			link := pd.DataWriteGUID().String()
			pd.Close()
			if !strings.Contains(info, "Differential") || !strings.Contains(info, link) {
				t.Errorf("vhdiinfo does not see a differencing disk linked to %s:\n%s", link, info)
			}
			if !bytes.Equal(libvhdiRead(t, childPath, parentPath), mirror) {
				t.Fatal("libvhdi reads the child+parent differently from what we wrote")
			}
			c, err = Open(childPath, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !bytes.Equal(readAll(t, c), mirror) {
				t.Fatal("reopened child differs")
			}
		})
	}
}

func TestParentChangedIsAnError(t *testing.T) {
	dir := t.TempDir()
	parentPath, childPath := filepath.Join(dir, "base.vhdx"), filepath.Join(dir, "child.vhdx")
	p, err := Create(parentPath, CreateOptions{Size: 8 * mib})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	c, err := Create(childPath, CreateOptions{Parent: parentPath})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	p, err = Open(parentPath, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt([]byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	p.Close()
	_, err = Open(childPath, OpenOptions{ReadOnly: true})
	if !errors.Is(err, ErrParentMismatch) {
		t.Fatalf("open child of a modified parent: %v, want ErrParentMismatch", err)
	}
	// Moving the pair keeps the link: the relative path resolves.
	moved := filepath.Join(dir, "moved")
	os.Mkdir(moved, 0o755)
	p2, err := Create(filepath.Join(moved, "base.vhdx"), CreateOptions{Size: 8 * mib})
	if err != nil {
		t.Fatal(err)
	}
	p2.Close()
	c2, err := Create(filepath.Join(moved, "c.vhdx"), CreateOptions{Parent: filepath.Join(moved, "base.vhdx")})
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	other := filepath.Join(dir, "other")
	if err := os.Rename(moved, other); err != nil {
		t.Fatal(err)
	}
	c2, err = Open(filepath.Join(other, "c.vhdx"), OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open a moved child+parent pair: %v", err)
	}
	c2.Close()
}

func TestResize(t *testing.T) {
	for _, tc := range []struct {
		name     string
		typ      Type
		from, to int64
	}{
		{"dynamic-in-place", Dynamic, 10 * mib, 100*mib + 512},
		{"dynamic-bat-moves", Dynamic, 64 * mib, 200 << 30},
		{"fixed", Fixed, 8 * mib, 20 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "d.vhdx")
			d, err := Create(path, CreateOptions{Size: tc.from, Type: tc.typ})
			if err != nil {
				t.Fatal(err)
			}
			pattern := bytes.Repeat([]byte("layervisor"), 1000)
			if _, err := d.WriteAt(pattern, tc.from-int64(len(pattern))); err != nil {
				t.Fatal(err)
			}
			if err := d.Resize(tc.to); err != nil {
				t.Fatal(err)
			}
			if _, err := d.WriteAt(pattern, tc.to-int64(len(pattern))); err != nil {
				t.Fatal(err)
			}
			if err := d.Resize(tc.from); err == nil {
				t.Error("shrinking succeeded")
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			testutil.Run(t, "qemu-img", "check", "-f", "vhdx", path)
			out := string(testutil.Run(t, "qemu-io", "-f", "vhdx", "-r", "-c", fmt.Sprintf("read -v %d 10", tc.from-int64(len(pattern))),
				"-c", fmt.Sprintf("read -v %d 10", tc.to-10), path))
			if strings.Count(out, "layervisor") != 2 {
				t.Fatalf("QEMU does not read the data before and after the resize:\n%s", out)
			}
			d, err = Open(path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Size() != tc.to || d.Info().Type != tc.typ {
				t.Fatalf("reopened: size %d type %s", d.Size(), d.Info().Type)
			}
		})
	}
}

// Concurrent readers and writers on disjoint ranges see their own data.
func TestConcurrentReadWrite(t *testing.T) {
	dir := t.TempDir()
	d, err := Create(filepath.Join(dir, "d.vhdx"), CreateOptions{Size: 16 * mib})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(w + 1)}, 64*1024)
			got := make([]byte, len(buf))
			for i := 0; i < 16; i++ {
				off := int64(w)*2*mib + int64(i)*64*1024 + 1000
				if _, err := d.WriteAt(buf, off); err != nil {
					errs <- err
					return
				}
				if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, buf) {
					errs <- fmt.Errorf("writer %d read back wrong data (%v)", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCreateRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []CreateOptions{
		{Size: 0}, {Size: 1000}, {Size: mib, BlockSize: 3 * mib}, {Size: mib, BlockSize: 512 * mib},
		{Size: mib, LogicalSectorSize: 1024}, {Size: MaxSize + mib}, {Size: mib, Type: "thin"},
		{Size: mib, Type: Differencing}, {Size: mib, Type: Fixed, Parent: "x.vhdx"},
	} {
		path := filepath.Join(dir, "bad.vhdx")
		if d, err := Create(path, o); err == nil {
			d.Close()
			t.Errorf("Create(%+v) succeeded", o)
		}
		if _, err := os.Stat(path); err == nil {
			t.Errorf("Create(%+v) left %s behind", o, path)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed creates left %d files", len(ents))
	}
	good := filepath.Join(dir, "good.vhdx")
	d, err := Create(good, CreateOptions{Size: mib})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := Create(good, CreateOptions{Size: mib}); !errors.Is(err, os.ErrExist) {
		t.Errorf("create over an existing file: %v", err)
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.vhdx")
	d, _ := Create(path, CreateOptions{Size: mib})
	d.Close()
	d, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write to read-only disk: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 10), mib-5); err == nil {
		t.Error("read across the end did not report io.EOF")
	}
}

// Writes outside the disk are refused, including offsets where off+len
// overflows.
func TestWriteOutsideIsAnError(t *testing.T) {
	d, err := Create(filepath.Join(t.TempDir(), "d.vhdx"), CreateOptions{Size: mib})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, off := range []int64{-1, mib - 1, mib + 1, math.MaxInt64} {
		if _, err := d.WriteAt([]byte{1, 2}, off); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Errorf("write at %d: %v", off, err)
		}
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	g := mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	if g.String() != "2dc27766-f623-4200-9d64-115e9bfd4a08" {
		t.Errorf("String() = %s", g)
	}
	// Little-endian first three fields, as Windows stores them.
	if binary.LittleEndian.Uint32(g[:4]) != 0x2DC27766 || g[8] != 0x9D {
		t.Errorf("on-disk bytes %x", g[:])
	}
	for _, bad := range []string{"", "2DC27766F6234200-9D64-115E9BFD4A08", "zzc27766-f623-4200-9d64-115e9bfd4a08"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) succeeded", bad)
		}
	}
}

func TestReidentify(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.vhdx"), filepath.Join(dir, "b.vhdx")
	d, err := Create(a, CreateOptions{Size: 4 * mib})
	if err != nil {
		t.Fatal(err)
	}
	d.WriteAt([]byte("same content"), 0)
	d.Close()
	data, _ := os.ReadFile(a)
	writeFile(t, b, data)
	if err := Reidentify(b); err != nil {
		t.Fatal(err)
	}
	da, _ := Open(a, OpenOptions{ReadOnly: true})
	db, err := Open(b, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer da.Close()
	defer db.Close()
	ia, ib := da.Info(), db.Info()
	if ia.DiskID == ib.DiskID || ia.DataWriteGUID == ib.DataWriteGUID || ia.FileWriteGUID == ib.FileWriteGUID {
		t.Errorf("copy keeps the template's identity: %+v vs %+v", ia, ib)
	}
	if !bytes.Equal(readAll(t, da), readAll(t, db)) {
		t.Error("content changed")
	}
	testutil.Run(t, "qemu-img", "check", "-f", "vhdx", b)
}
