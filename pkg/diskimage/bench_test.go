package diskimage

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// fillRandom writes n bytes of pseudo-random data at off.
func fillRandom(b *testing.B, f *os.File, rng *rand.ChaCha8, off, n int64) {
	buf := make([]byte, 1<<20)
	for done := int64(0); done < n; done += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), n-done)], off+done); err != nil {
			b.Fatal(err)
		}
	}
}

// benchInputs writes the 1 GiB raw images the conversion benchmarks share:
// "sparse" holds 32 scattered MiB of data, "random" is all data.
func benchInputs(b *testing.B) map[string]string {
	dir := b.TempDir()
	rng := rand.NewChaCha8([32]byte{1})
	inputs := map[string]string{}
	for _, kind := range []string{"sparse", "random"} {
		p := filepath.Join(dir, kind+".img")
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		f.Truncate(1 << 30)
		if kind == "random" {
			fillRandom(b, f, rng, 0, 1<<30)
		} else {
			for i := int64(0); i < 32; i++ {
				fillRandom(b, f, rng, i*(32<<20)+(5<<20), 1<<20)
			}
		}
		f.Close()
		inputs[kind] = p
	}
	return inputs
}

// benchConvert runs layervisor's conversion and qemu-img's side by side on
// each input.
func benchConvert(b *testing.B, o ConvertOptions, out string, qemuArgs ...string) {
	qemuImg := testutil.NeedTool(b, "qemu-img")
	inputs := benchInputs(b)
	for _, kind := range []string{"sparse", "random"} {
		in := inputs[kind]
		b.Run(kind+"/layervisor", func(b *testing.B) {
			b.SetBytes(1 << 30)
			for i := 0; i < b.N; i++ {
				os.Remove(out)
				if _, err := Convert(context.Background(), in, out, o); err != nil {
					b.Fatal(err)
				}
			}
		})
		// qemu-img convert leaves its output in the page cache (no final
		// flush); Convert returns only once the file is durable. The
		// "+fsync" anchor adds that flush, for the same end state.
		for _, anchor := range []string{"qemu-img", "qemu-img+fsync"} {
			b.Run(kind+"/"+anchor, func(b *testing.B) {
				b.SetBytes(1 << 30)
				for i := 0; i < b.N; i++ {
					os.Remove(out)
					args := append(append([]string{"convert", "-f", "raw"}, qemuArgs...), in, out)
					if o, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
						b.Fatalf("%v: %s", err, o)
					}
					if anchor == "qemu-img+fsync" {
						syncFile(b, out)
					}
				}
			})
		}
	}
}

func syncFile(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConvertToVHDX converts the 1 GiB raw images with layervisor and
// with `qemu-img convert -O vhdx` (same 1 MiB blocks).
func BenchmarkConvertToVHDX(b *testing.B) {
	benchConvert(b, ConvertOptions{Format: diskformat.VHDX}, filepath.Join(b.TempDir(), "out.vhdx"),
		"-O", "vhdx", "-o", "block_size=1M")
}

// BenchmarkConvertToVHD converts them to dynamic VHDs (2 MiB blocks, both
// with the exact size rather than QEMU's CHS rounding).
func BenchmarkConvertToVHD(b *testing.B) {
	benchConvert(b, ConvertOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}, filepath.Join(b.TempDir(), "out.vhd"),
		"-O", "vpc", "-o", "subformat=dynamic,force_size=on")
}
