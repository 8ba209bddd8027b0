package diskimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// sparseRaw writes a raw image of size bytes with a few data islands and
// returns its content.
func sparseRaw(t *testing.T, path string, size int64) []byte {
	t.Helper()
	want := make([]byte, size)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(size)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, off := range []int64{0, 3<<20 + 777, size/2 + 4096, size - 70000} {
		b := make([]byte, 70000)
		for i := range b {
			b[i] = byte(rng.IntN(255) + 1)
		}
		f.WriteAt(b, off)
		copy(want[off:], b)
	}
	// A run of explicit zeros: data on disk, but it must not be copied.
	f.WriteAt(make([]byte, 4<<20), 8<<20)
	return want
}

func readImage(t *testing.T, path string) []byte {
	t.Helper()
	img, _, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if n, err := img.ReadAt(b, 0); n != len(b) {
		t.Fatalf("read %s: %d bytes, %v", path, n, err)
	}
	return b
}

// raw → VHDX (dynamic, fixed) → raw and → fixed VHD: qemu-img agrees the
// contents are identical, zero blocks are not allocated, and QEMU opens the
// VHD footer with its size taken from the footer.
func TestConvertRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	const size = 32 << 20
	want := sparseRaw(t, src, size)
	for _, typ := range []vhdx.Type{vhdx.Dynamic, vhdx.Fixed} {
		x := filepath.Join(dir, string(typ)+".vhdx")
		res, err := Convert(ctx, src, x, ConvertOptions{Format: diskformat.VHDX, Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		// Extents are page-granular; the 4 MiB of explicit zeros is skipped.
		if res.WrittenBytes < 4*70000 || res.WrittenBytes > 4*(70000+2*4096) {
			t.Errorf("%s: wrote %d bytes, want about the %d non-zero ones", typ, res.WrittenBytes, 4*70000)
		}
		testutil.Run(t, "qemu-img", "check", "-f", "vhdx", x)
		testutil.Run(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", x, src)
		d, err := vhdx.Open(x, vhdx.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		in := d.Info()
		d.Close()
		if typ == vhdx.Dynamic && in.BlocksPresent != 4 { // the islands lie in 4 1-MiB blocks
			t.Errorf("dynamic conversion allocated %d blocks, want 4", in.BlocksPresent)
		}
		back := filepath.Join(dir, string(typ)+"-back.img")
		if _, err := Convert(ctx, x, back, ConvertOptions{Format: diskformat.Raw}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(back); !bytes.Equal(got, want) {
			t.Errorf("%s: raw → vhdx → raw changed the content", typ)
		}
	}
	vhdPath := filepath.Join(dir, "layer.vhd")
	if _, err := Convert(ctx, src, vhdPath, ConvertOptions{Format: diskformat.VHD}); err != nil {
		t.Fatal(err)
	}
	opts := "driver=vpc,force_size_calc=current_size,file.filename=" + vhdPath
	info := string(testutil.Run(t, "qemu-img", "info", "--output=json", "--image-opts", opts))
	if !strings.Contains(info, `"virtual-size": 33554432`) {
		t.Errorf("QEMU's vpc driver does not take the size from our footer:\n%s", info)
	}
	testutil.Run(t, "qemu-img", "compare", "--image-opts", opts, "driver=raw,file.filename="+src)
	if !bytes.Equal(readImage(t, vhdPath), want) {
		t.Error("fixed VHD reads differently")
	}
}

// VHDX and dynamic VHD files written by qemu-img convert read through us
// as QEMU reads them; a differencing chain converts to its flat content.
func TestReadForeignFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	want := sparseRaw(t, src, 24<<20)
	for _, args := range [][]string{
		{"-O", "vhdx"}, {"-O", "vhdx", "-o", "subformat=fixed"}, {"-O", "vpc", "-o", "subformat=dynamic"},
	} {
		out := filepath.Join(dir, "q-"+strings.Join(args, "")+".img")
		testutil.Run(t, "qemu-img", append(append([]string{"convert", "-f", "raw"}, args...), src, out)...)
		raw := filepath.Join(dir, "q.raw")
		os.Remove(raw)
		// QEMU rounds dynamic VHD sizes to whole CHS geometries.
		testutil.Run(t, "qemu-img", "convert", "-O", "raw", out, raw)
		qemuSees, _ := os.ReadFile(raw)
		got := readImage(t, out)
		if !bytes.Equal(got, qemuSees) {
			t.Errorf("qemu-img convert %v: our read differs from QEMU's (%d vs %d bytes)", args, len(got), len(qemuSees))
		}
		if !bytes.Equal(got[:len(want)], want) {
			t.Errorf("qemu-img convert %v: content differs from the source", args)
		}
	}
}

func TestConvertDifferencingChain(t *testing.T) {
	dir := t.TempDir()
	base, child := filepath.Join(dir, "base.vhdx"), filepath.Join(dir, "child.vhdx")
	p, err := vhdx.Create(base, vhdx.CreateOptions{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	p.WriteAt(bytes.Repeat([]byte("base"), 1024), 0)
	p.WriteAt(bytes.Repeat([]byte("deep"), 1024), 6<<20)
	p.Close()
	c, err := vhdx.Create(child, vhdx.CreateOptions{Parent: base})
	if err != nil {
		t.Fatal(err)
	}
	c.WriteAt([]byte("child"), 100)
	c.Close()
	flat := filepath.Join(dir, "flat.img")
	if _, err := Convert(context.Background(), child, flat, ConvertOptions{Format: diskformat.Raw}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(flat)
	want := make([]byte, 8<<20)
	copy(want, bytes.Repeat([]byte("base"), 1024))
	copy(want[6<<20:], bytes.Repeat([]byte("deep"), 1024))
	copy(want[100:], "child")
	if !bytes.Equal(got, want) {
		t.Fatal("flattened chain differs")
	}
}

// Bad input names the file and leaves no output or temp file behind.
func TestConvertFailuresLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.vhdx")
	os.WriteFile(bad, append([]byte("vhdxfile"), make([]byte, 2<<20)...), 0o644)
	exists := filepath.Join(dir, "exists.vhdx")
	os.WriteFile(exists, []byte("x"), 0o644)
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o644)
	for _, tc := range []struct {
		src, dst string
		o        ConvertOptions
		want     string
	}{
		{bad, filepath.Join(dir, "out.img"), ConvertOptions{Format: diskformat.Raw}, "bad.vhdx"},
		{filepath.Join(dir, "missing.img"), filepath.Join(dir, "out.vhdx"), ConvertOptions{Format: diskformat.VHDX}, "missing.img"},
		{odd, exists, ConvertOptions{Format: diskformat.VHDX}, "exists.vhdx"},
		{odd, filepath.Join(dir, "out.vhd"), ConvertOptions{Format: diskformat.VHD}, "multiple of 512"},
		{odd, filepath.Join(dir, "out2.vhd"), ConvertOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}, "multiple of 512"},
		{odd, filepath.Join(dir, "out3.vhd"), ConvertOptions{Format: diskformat.VHD, Type: "sparse"}, "unknown VHD type"},
	} {
		_, err := Convert(context.Background(), tc.src, tc.dst, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("convert %s → %s: %v, want an error naming %q", tc.src, tc.dst, err, tc.want)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); n != "bad.vhdx" && n != "exists.vhdx" && n != "odd.img" {
			t.Errorf("left behind: %s", n)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	src := filepath.Join(dir, "src.img")
	sparseRaw(t, src, 8<<20)
	if _, err := Convert(ctx, src, filepath.Join(dir, "c.vhdx"), ConvertOptions{Format: diskformat.VHDX}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled conversion: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c.vhdx")); err == nil {
		t.Error("cancelled conversion left its output")
	}
}

func TestDetect(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		fm   diskformat.Format
		o    CreateOptions
	}{
		{"a.vhdx", diskformat.VHDX, CreateOptions{Format: diskformat.VHDX}},
		{"a.vhd", diskformat.VHD, CreateOptions{Format: diskformat.VHD, Type: vhdx.Fixed}},
		{"d.vhd", diskformat.VHD, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}},
		{"a.img", diskformat.Raw, CreateOptions{Format: diskformat.Raw}},
	} {
		p := filepath.Join(dir, tc.name)
		if err := Create(p, 4<<20, tc.o); err != nil {
			t.Fatal(err)
		}
		if fm, err := Detect(p); err != nil || fm != tc.fm {
			t.Errorf("Detect(%s) = %s, %v", tc.name, fm, err)
		}
		if err := Create(p, 4<<20, tc.o); !errors.Is(err, os.ErrExist) {
			t.Errorf("create over %s: %v", tc.name, err)
		}
	}
}

// raw → dynamic VHD (default and 512 KiB blocks, a size that is not a
// multiple of either): QEMU finds the content identical, only the blocks
// holding data are allocated (the explicit zeros are not), and the file is
// the headers, those blocks and the footer; converting back gives the raw.
func TestConvertToDynamicVHD(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		size, block, blocks int64 // blocks: those the data islands touch
	}{
		{32 << 20, 0, 4}, {33<<20 + 3*512, 512 << 10, 5}, // the last island spans two blocks
	} {
		src := filepath.Join(dir, fmt.Sprint("src-", tc.size, ".img"))
		want := sparseRaw(t, src, tc.size)
		out := filepath.Join(dir, fmt.Sprint("out-", tc.size, ".vhd"))
		res, err := Convert(ctx, src, out, ConvertOptions{Format: diskformat.VHD, Type: vhdx.Dynamic, BlockSize: tc.block})
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != tc.size || res.WrittenBytes > 4*(70000+2*4096) {
			t.Errorf("%s: %+v", out, res)
		}
		if err := vhd.CheckFile(out); err != nil {
			t.Error(err)
		}
		opts := "driver=vpc,force_size_calc=current_size,file.filename=" + out
		info := string(testutil.Run(t, "qemu-img", "info", "--output=json", "--image-opts", opts))
		if !strings.Contains(info, fmt.Sprintf(`"virtual-size": %d,`, tc.size)) {
			t.Errorf("%s: QEMU sees another size:\n%s", out, info)
		}
		testutil.Run(t, "qemu-img", "compare", "--image-opts", opts, "driver=raw,file.filename="+src)
		d, err := vhd.OpenDynamic(out)
		if err != nil {
			t.Fatal(err)
		}
		bs, n := d.BlockSize(), d.AllocatedBlocks()
		d.Close()
		if n != tc.blocks {
			t.Errorf("%s: %d blocks allocated, want %d", out, n, tc.blocks)
		}
		entries := (tc.size + bs - 1) / bs
		st, _ := os.Stat(out)
		if want := 3*512 + (4*entries+511)/512*512 + n*(512+bs) + 512; st.Size() != want {
			t.Errorf("%s: %d bytes, want %d (headers, %d blocks, footer)", out, st.Size(), want, n)
		}
		if !bytes.Equal(readImage(t, out), want) {
			t.Errorf("%s reads differently from its source", out)
		}
		back := filepath.Join(dir, fmt.Sprint("back-", tc.size, ".img"))
		if _, err := Convert(ctx, out, back, ConvertOptions{Format: diskformat.Raw}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(back); !bytes.Equal(got, want) {
			t.Errorf("%s: raw → dynamic VHD → raw changed the content", out)
		}
	}
	// Create makes one too, which Open reads as an empty disk.
	p := filepath.Join(dir, "new.vhd")
	if err := Create(p, 8<<20, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic, BlockSize: 512 << 10}); err != nil {
		t.Fatal(err)
	}
	img, fm, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if exts, _ := img.Extents(); fm != diskformat.VHD || img.Size() != 8<<20 || len(exts) != 0 {
		t.Errorf("new dynamic VHD: %s, %d bytes, extents %v", fm, img.Size(), exts)
	}
	if err := Create(filepath.Join(dir, "big.vhd"), vhd.MaxDynamicSize+512, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}); err == nil || !strings.Contains(err.Error(), "2040 GiB") {
		t.Errorf("a dynamic VHD over 2040 GiB: %v", err)
	}
}
