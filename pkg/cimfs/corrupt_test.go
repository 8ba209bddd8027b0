package cimfs

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// smallImage writes a tiny image and returns its directory and region set.
func smallImage(t *testing.T) (string, *Writer) {
	t.Helper()
	dir := t.TempDir()
	w, err := Create(dir, "t.cim", nil)
	must(t, err)
	must(t, w.Add("d", FileInfo{Attributes: AttrDirectory}, nil))
	must(t, w.Add("d/f", FileInfo{SecurityDescriptor: sdA}, strings.NewReader("data")))
	mustCommit(t, w)
	return dir, w
}

func patch(t *testing.T, path string, off int, b []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	must(t, err)
	copy(data[off:], b)
	must(t, os.WriteFile(path, data, 0o644))
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func TestCorruptImages(t *testing.T) {
	cases := []struct {
		name   string
		breakf func(t *testing.T, dir string, w *Writer)
		want   []string // substrings of the error
	}{
		{"truncated .cim", func(t *testing.T, dir string, w *Writer) {
			must(t, os.Truncate(filepath.Join(dir, "t.cim"), 0x30))
		}, []string{"t.cim", "shorter than its 0x48-byte header"}},
		{"bad magic", func(t *testing.T, dir string, w *Writer) {
			patch(t, filepath.Join(dir, "t.cim"), 0, []byte("cimfileX"))
		}, []string{"t.cim", "bad magic", "offset 0"}},
		{"unsupported version", func(t *testing.T, dir string, w *Writer) {
			patch(t, filepath.Join(dir, "t.cim"), 0x10, []byte{9})
		}, []string{"t.cim", "version 9.0"}},
		{"filesystem offset out of range", func(t *testing.T, dir string, w *Writer) {
			patch(t, filepath.Join(dir, "t.cim"), 0x38, u64(0x7fffffff))
		}, []string{"filesystem object", "offset 0x7fffffff", "is outside", "/region_{G}_0 ("}},
		{"no such region", func(t *testing.T, dir string, w *Writer) {
			patch(t, filepath.Join(dir, "t.cim"), 0x38, u64(5<<48|0x28))
		}, []string{"region 5 offset 0x28", "no such region"}},
		{"missing region file", func(t *testing.T, dir string, w *Writer) {
			must(t, os.Remove(filepath.Join(dir, regionName(w.guid, 1))))
		}, []string{"region_{G}_1"}},
		{"truncated region", func(t *testing.T, dir string, w *Writer) {
			must(t, os.Truncate(filepath.Join(dir, regionName(w.guid, 0)), 0x1000))
		}, []string{"is outside", "/region_{G}_0 ("}},
		{"bad region header", func(t *testing.T, dir string, w *Writer) {
			patch(t, filepath.Join(dir, regionName(w.guid, 1)), 0x0c, []byte{7})
		}, []string{"region_{G}_1", "header type 7 at offset 0xc"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, w := smallImage(t)
			c.breakf(t, dir, w)
			img, err := Open(filepath.Join(dir, "t.cim"))
			if err == nil {
				img.Close()
				t.Fatal("corrupt image opened")
			}
			for _, s := range c.want {
				s = strings.ReplaceAll(s, "{G}", w.guid.String())
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

// TestDirectoryLoop points the root's only entry back at the root.
func TestDirectoryLoop(t *testing.T) {
	dir, w := smallImage(t)
	img := mustOpen(t, filepath.Join(dir, "t.cim"))
	root, err := img.Stat("")
	must(t, err)
	off := int(root.rec.data.ro.offset()) + 8 // first value of the link table
	img.Close()
	patch(t, filepath.Join(dir, regionName(w.guid, 0)), off, []byte{1, 0, 0, 0})
	img = mustOpen(t, filepath.Join(dir, "t.cim"))
	err = img.Walk(func(string, *File) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "FileID 1 reached twice") {
		t.Errorf("walk of a loop: %v", err)
	}
	// A bad name offset inside a link table is reported, not a panic.
	patch(t, filepath.Join(dir, regionName(w.guid, 0)), off+4, []byte{0xff, 0xff, 0, 0})
	img2 := mustOpen(t, filepath.Join(dir, "t.cim"))
	if _, err := img2.ReadDir(""); err == nil || !strings.Contains(err.Error(), "name offset 0xffff out of range") {
		t.Errorf("bad name offset: %v", err)
	}
}
