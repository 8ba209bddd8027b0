package cimfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// fsFixture writes an image with every kind of name FS must present:
// names whose byte order differs from the upcased on-disk order, a large
// file (data region), an empty one, a hard link, an alternate stream, a
// symlink, a junction, a reparse point that is not a link, an empty
// directory.
func fsFixture(t *testing.T) *Image {
	t.Helper()
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	wof := []byte{0x17, 0, 0, 0x80, 4, 0, 0, 0, 1, 0, 0, 0} // IO_REPARSE_TAG_WOF, 4 bytes of data
	big := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	return writeImage(t, func(w *Writer) []error {
		return []error{
			w.Add("Files", FileInfo{Attributes: AttrDirectory, LastWriteTime: ts}, nil),
			w.Add("Files/a.txt", FileInfo{LastWriteTime: ts}, strings.NewReader("alpha")),
			w.Add("Files/B.txt", FileInfo{}, strings.NewReader("bravo")),
			w.Add("Files/_x", FileInfo{}, strings.NewReader("underscore")),
			w.Add("Files/Émile", FileInfo{}, strings.NewReader("accent")),
			w.Add("Files/big.bin", FileInfo{}, bytes.NewReader(big)),
			w.Add("Files/empty", FileInfo{}, nil),
			w.Add("Files/Sub", FileInfo{Attributes: AttrDirectory}, nil),
			w.Add("Files/Sub/Deeper", FileInfo{Attributes: AttrDirectory}, nil),
			w.AddLink("Files/a.txt", "Files/Sub/hard"),
			w.AddAlternateStream("Files/a.txt", "zone", strings.NewReader("[ZoneTransfer]")),
			w.Add("Files/link", FileInfo{ReparseData: wintar.EncodeReparse(`Sub\hard`, false)}, nil),
			w.Add("Files/junction", FileInfo{Attributes: AttrDirectory, ReparseData: wintar.EncodeReparse(`C:\Windows`, true)}, nil),
			w.Add("Files/compressed", FileInfo{ReparseData: wof}, strings.NewReader("stored")),
			w.Add("Hives", FileInfo{Attributes: AttrDirectory}, nil),
		}
	})
}

// writeImage writes an image with the Writer calls steps makes, commits it
// and opens it.
func writeImage(t *testing.T, steps func(w *Writer) []error) *Image {
	t.Helper()
	dir := t.TempDir()
	w, err := Create(dir, "t.cim", nil)
	must(t, err)
	for _, err := range append(steps(w), w.Commit()) {
		must(t, err)
	}
	return mustOpen(t, filepath.Join(dir, "t.cim"))
}

func TestFSConformance(t *testing.T) {
	img := fsFixture(t)
	if err := fstest.TestFS(img.FS(), "Files/a.txt", "Files/Sub/hard", "Files/Sub/Deeper", "Files/big.bin",
		"Files/link", "Files/junction", "Files/compressed", "Hives"); err != nil {
		t.Fatal(err)
	}
}

func TestFSRealImage(t *testing.T) {
	img := mustOpen(t, filepath.Join(realDir(t), "test.cim"))
	fsys := img.FS()
	if err := fstest.TestFS(fsys, "hello.txt"); err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(fsys, "hello.txt")
	if err != nil || string(b) != "Hello world!" {
		t.Errorf("hello.txt = %q, %v", b, err)
	}
	fi, err := fs.Stat(fsys, "hello.txt")
	must(t, err)
	f := fi.Sys().(*File)
	if fi.Mode() != 0o444 || fi.Size() != 12 || !fi.ModTime().Equal(f.LastWriteTime) || f.Attributes != AttrArchive {
		t.Errorf("hello.txt: %v, attributes %#x", fi, f.Attributes)
	}
}

func TestFSSemantics(t *testing.T) {
	img := fsFixture(t)
	fsys := img.FS()

	// Lookups ignore case; names come back in the image's spelling.
	fi, err := fsys.Stat("FILES/sub/HARD")
	if err != nil || fi.Name() != "hard" || fi.Size() != 5 {
		t.Errorf("Stat(FILES/sub/HARD) = %v, %v", fi, err)
	}
	if b, err := fsys.ReadFile("files/émile"); err != nil || string(b) != "accent" {
		t.Errorf("ReadFile(files/émile) = %q, %v", b, err)
	}
	// Hard links are one file.
	a, _ := fsys.Stat("Files/a.txt")
	if a == nil || fi == nil || a.Sys().(*File).ID != fi.Sys().(*File).ID {
		t.Errorf("the hard link is not the same file")
	}

	// io/fs names: slashes only, no alternate streams, nothing through a link.
	for _, name := range []string{`Files\a.txt`, "Files/a.txt:zone", "Files/link/x", "Files/junction/System32", "Files/a.txt/x"} {
		if _, err := fsys.Open(name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%q) = %v, want ErrNotExist", name, err)
		}
	}
	for _, name := range []string{"/Files", "Files/", "Files/../Hives", "./Files", ""} {
		if _, err := fsys.Open(name); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("Open(%q) = %v, want ErrInvalid", name, err)
		}
	}
	// The streams are on the File.
	if r, err := a.Sys().(*File).OpenStream("zone"); err != nil || r.Size() != 14 {
		t.Errorf("stream zone: %v", err)
	}

	// Modes, and link targets.
	for name, want := range map[string]fs.FileMode{
		".": fs.ModeDir | 0o555, "Files/Sub": fs.ModeDir | 0o555, "Files/a.txt": 0o444,
		"Files/link": fs.ModeSymlink | 0o444, "Files/junction": fs.ModeSymlink | 0o444,
		"Files/compressed": fs.ModeIrregular | 0o444,
	} {
		if fi, err := fsys.Lstat(name); err != nil || fi.Mode() != want {
			t.Errorf("Lstat(%s) = %v, %v; want mode %v", name, fi, err, want)
		}
	}
	for name, want := range map[string]string{"Files/link": "Sub/hard", "Files/junction": "C:/Windows"} {
		if got, err := fs.ReadLink(fsys, name); err != nil || got != want {
			t.Errorf("ReadLink(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := fsys.ReadLink("Files/a.txt"); err == nil {
		t.Errorf("ReadLink of a plain file succeeded")
	}
	if b, err := fsys.ReadFile("Files/compressed"); err != nil || string(b) != "stored" {
		t.Errorf("the WOF file reads %q, %v; want its stored stream", b, err)
	}

	// FS.ReadDir sorts by bytes; the directory file gives the image's
	// (upcased) order.
	var sorted, onDisk []string
	ents, err := fsys.ReadDir("Files")
	must(t, err)
	for _, e := range ents {
		sorted = append(sorted, e.Name())
	}
	d, err := fsys.Open("Files")
	must(t, err)
	ents, err = d.(fs.ReadDirFile).ReadDir(-1)
	must(t, err)
	d.Close()
	for _, e := range ents {
		onDisk = append(onDisk, e.Name())
	}
	if !slices.IsSorted(sorted) || slices.IsSorted(onDisk) || !slices.Equal(slices.Sorted(slices.Values(onDisk)), sorted) {
		t.Errorf("ReadDir: sorted %q, directory order %q", sorted, onDisk)
	}

	// A file is not a directory and a directory has no content.
	if _, err := fsys.ReadDir("Files/a.txt"); err == nil {
		t.Errorf("ReadDir of a file succeeded")
	}
	if _, err := fsys.ReadFile("Files"); err == nil {
		t.Errorf("ReadFile of a directory succeeded")
	}
}

// A corrupt image cannot make a walk loop or fan out: a directory listed
// inside itself, or under two names, is ErrCorrupt.
func TestFSDirectoryLoop(t *testing.T) {
	for _, tc := range []struct {
		name string
		link func(img *Image) (off int, id uint32) // which table value to point where
		want string
	}{
		{"root inside itself", func(img *Image) (int, uint32) {
			root, _ := img.Stat("")
			return int(root.rec.data.ro.offset()) + 8, root.ID
		}, "the root directory is listed"},
		{"directory inside itself", func(img *Image) (int, uint32) {
			d, _ := img.Stat("d")
			return int(d.rec.data.ro.offset()) + 8, d.ID
		}, "is listed twice"},
		{"directory under two names", func(img *Image) (int, uint32) {
			root, _ := img.Stat("")
			d, _ := img.Stat("d")
			return int(root.rec.data.ro.offset()) + 8 + 4, d.ID // the entry after d (e) → d
		}, "is listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w, err := Create(dir, "t.cim", nil)
			must(t, err)
			must(t, w.Add("d", FileInfo{Attributes: AttrDirectory}, nil))
			must(t, w.Add("d/sub", FileInfo{Attributes: AttrDirectory}, nil))
			must(t, w.Add("e", FileInfo{Attributes: AttrDirectory}, nil))
			mustCommit(t, w)
			img, err := Open(filepath.Join(dir, "t.cim"))
			must(t, err)
			off, id := tc.link(img)
			img.Close()
			patch(t, filepath.Join(dir, regionName(w.guid, 0)), off, binary.LittleEndian.AppendUint32(nil, id))

			img = mustOpen(t, filepath.Join(dir, "t.cim"))
			n := 0
			err = fs.WalkDir(img.FS(), ".", func(p string, d fs.DirEntry, err error) error {
				if n++; n > 100 {
					t.Fatal("the walk does not end")
				}
				return err
			})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("WalkDir = %v; want ErrCorrupt saying %q", err, tc.want)
			}
		})
	}
}
