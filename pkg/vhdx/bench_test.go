//go:build linux

package vhdx

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

const benchSize = 1 << 30

// target is what the I/O benchmarks drive: a VHDX or the raw-file anchor.
type target interface {
	ReadAt([]byte, int64) (int, error)
	WriteAt([]byte, int64) (int, error)
	Close() error
}

func openTargets(b *testing.B) map[string]func() target {
	dir := b.TempDir()
	parent := filepath.Join(dir, "parent.vhdx")
	p, err := Create(parent, CreateOptions{Size: benchSize})
	if err != nil {
		b.Fatal(err)
	}
	p.Close()
	n := 0
	name := func() string { n++; return filepath.Join(dir, "t"+string(rune('a'+n))) }
	return map[string]func() target{
		"raw": func() target {
			f, err := os.Create(name() + ".img")
			if err != nil {
				b.Fatal(err)
			}
			f.Truncate(benchSize)
			return f
		},
		"vhdx": func() target {
			d, err := Create(name()+".vhdx", CreateOptions{Size: benchSize})
			if err != nil {
				b.Fatal(err)
			}
			return d
		},
		// Every block already allocated: the steady state of a used disk.
		"vhdx-allocated": func() target {
			d, err := Create(name()+".vhdx", CreateOptions{Size: benchSize})
			if err != nil {
				b.Fatal(err)
			}
			for off := int64(0); off < benchSize; off += DefaultBlockSize {
				if _, err := d.WriteAt([]byte{1}, off); err != nil {
					b.Fatal(err)
				}
			}
			if err := d.Sync(); err != nil {
				b.Fatal(err)
			}
			return d
		},
		"vhdx-differencing": func() target {
			d, err := Create(name()+".vhdx", CreateOptions{Parent: parent})
			if err != nil {
				b.Fatal(err)
			}
			return d
		},
	}
}

// quiesce gives every case the same start: no writeback of an earlier
// case's dirty pages during this one, and (as root) an empty page cache, so
// that a case is not slowed by the memory an earlier case filled.
func quiesce() {
	syscall.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

// BenchmarkRandomWrite4K writes 4 KiB at random aligned offsets of a 1 GiB
// disk: a raw file (the anchor), a fresh dynamic VHDX (first writes
// allocate blocks), one whose blocks are all allocated, and a fresh
// differencing VHDX.
func BenchmarkRandomWrite4K(b *testing.B) {
	targets := openTargets(b)
	for _, kind := range []string{"raw", "vhdx", "vhdx-allocated", "vhdx-differencing"} {
		b.Run(kind, func(b *testing.B) {
			t := targets[kind]()
			defer func() {
				b.StopTimer() // Close flushes a VHDX; the raw anchor is never flushed
				t.Close()
			}()
			rng := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 4096)
			for i := range buf {
				buf[i] = byte(i)
			}
			b.SetBytes(4096)
			quiesce()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := t.WriteAt(buf, rng.Int64N(benchSize/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSequentialRead reads 256 MiB of written data in 1 MiB requests.
func BenchmarkSequentialRead(b *testing.B) {
	targets := openTargets(b)
	for _, kind := range []string{"raw", "vhdx", "vhdx-differencing"} {
		b.Run(kind, func(b *testing.B) {
			t := targets[kind]()
			defer func() {
				b.StopTimer() // Close flushes a VHDX; the raw anchor is never flushed
				t.Close()
			}()
			buf := make([]byte, 1<<20)
			rand.NewChaCha8([32]byte{}).Read(buf)
			const span = 256 << 20
			for off := int64(0); off < span; off += int64(len(buf)) {
				if _, err := t.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(span)
			syscall.Sync() // reads are of cached data: what is measured is the format's overhead
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for off := int64(0); off < span; off += int64(len(buf)) {
					if _, err := t.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
