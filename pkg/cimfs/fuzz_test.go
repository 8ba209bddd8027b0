package cimfs

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzOpen feeds arbitrary .cim, region 0 and region 1 bytes to the reader
// and reads everything it can reach: it must return errors, never panic or
// allocate beyond the input's size.
func FuzzOpen(f *testing.F) {
	dir := realDir(f)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(read("test.cim"), read(regionName(mustGUID(f, read("test.cim")), 0)), read(regionName(mustGUID(f, read("test.cim")), 1)))

	out := f.TempDir()
	w, err := Create(out, "s.cim", nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, step := range []error{
		w.Add("d", FileInfo{Attributes: AttrDirectory, SecurityDescriptor: sdA}, nil),
		w.Add("d/f", FileInfo{EAs: ea("A", "b"), SecurityDescriptor: sdB}, strings.NewReader("content")),
		w.AddAlternateStream("d/f", "ads", strings.NewReader("stream")),
		w.AddLink("d/f", "g"),
		w.Add("l", FileInfo{ReparseData: symlinkReparse("d")}, nil),
		w.Commit(),
	} {
		if step != nil {
			f.Fatal(step)
		}
	}
	rd := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(rd("s.cim"), rd(regionName(w.guid, 0)), rd(regionName(w.guid, 1)))

	f.Fuzz(func(t *testing.T, cim, r0, r1 []byte) {
		fsys := fstest.MapFS{"x.cim": {Data: cim}}
		if len(cim) >= 0x30 {
			var g GUID
			copy(g[:], cim[0x20:])
			fsys[regionName(g, 0)] = &fstest.MapFile{Data: r0}
			fsys[regionName(g, 1)] = &fstest.MapFile{Data: r1}
		}
		img, err := OpenFS(fsys, "x.cim")
		if err != nil {
			return
		}
		defer img.Close()
		n := 0
		img.Walk(func(p string, f *File) error {
			// Bounded work per input: sparse streams may claim 2^48 bytes.
			if n++; n > 200 {
				return io.EOF
			}
			f.Info()
			f.Links()
			if ss, err := f.Streams(); err == nil {
				for _, s := range ss[:min(len(ss), 20)] {
					if r, err := f.OpenStream(s.Name); err == nil {
						io.Copy(io.Discard, io.LimitReader(r, 64<<10))
					}
				}
			}
			if r, err := f.Open(); err == nil {
				io.Copy(io.Discard, io.LimitReader(r, 64<<10))
			}
			img.Stat(p)
			return nil
		})
		// The same through io/fs, which must not loop either.
		cfs, m := img.FS(), 0
		fs.WalkDir(cfs, ".", func(p string, d fs.DirEntry, err error) error {
			if m++; m > 200 {
				return fs.SkipAll
			}
			if err != nil {
				return err
			}
			cfs.Lstat(p)
			cfs.ReadLink(p)
			if f, err := cfs.Open(p); err == nil {
				io.Copy(io.Discard, io.LimitReader(f, 64<<10))
				f.Close()
			}
			return nil
		})
	})
}

func mustGUID(t testing.TB, cim []byte) GUID {
	var g GUID
	if len(cim) < 0x30 {
		t.Fatal("short .cim")
	}
	copy(g[:], cim[0x20:])
	return g
}
