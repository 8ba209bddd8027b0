package cimfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func extractFixture(t *testing.T) *Image {
	t.Helper()
	ts := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	link := []byte{0x0c, 0, 0, 0xa0, 0, 0, 0, 0} // IO_REPARSE_TAG_SYMLINK, no data
	return writeImage(t, func(w *Writer) []error {
		return []error{
			w.Add("Files", FileInfo{Attributes: AttrDirectory, LastWriteTime: ts}, nil),
			w.Add("Files/Sub", FileInfo{Attributes: AttrDirectory, LastWriteTime: ts}, nil),
			w.Add("Files/Sub/a.txt", FileInfo{Attributes: AttrArchive, LastWriteTime: ts}, strings.NewReader("alpha")),
			w.AddAlternateStream("Files/Sub/a.txt", "zone", strings.NewReader("z")),
			w.AddLink("Files/Sub/a.txt", "Files/b.txt"),
			w.Add("Files/link", FileInfo{Attributes: AttrArchive | AttrReparsePoint, ReparseData: link}, nil),
			w.Add("Hives", FileInfo{Attributes: AttrDirectory}, nil),
		}
	})
}

// WalkTree visits a subtree whatever the case of its name, and gives the
// paths below it in the image's spelling.
func TestWalkTree(t *testing.T) {
	img := extractFixture(t)
	for _, tc := range []struct {
		sub  string
		want []string // p=rel
	}{
		{"", []string{"=", "Files=Files", "Files/Sub=Files/Sub", "Files/Sub/a.txt=Files/Sub/a.txt", "Files/b.txt=Files/b.txt", "Files/link=Files/link", "Hives=Hives"}},
		{`FILES\sub`, []string{"Files/Sub=", "Files/Sub/a.txt=a.txt"}},
		{"/files/", []string{"Files=", "Files/Sub=Sub", "Files/Sub/a.txt=Sub/a.txt", "Files/b.txt=b.txt", "Files/link=link"}},
		{"Fil", nil}, // a prefix of a name is not its parent
		{"nope", nil},
	} {
		var got []string
		if err := img.WalkTree(tc.sub, func(p, rel string, f *File) error {
			got = append(got, p+"="+rel)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		slices.Sort(tc.want)
		if !slices.Equal(got, tc.want) {
			t.Errorf("WalkTree(%q) = %q, want %q", tc.sub, got, tc.want)
		}
	}
}

func TestExtract(t *testing.T) {
	img := extractFixture(t)
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	var skipped []string
	n, err := img.Extract(dest, "files", ExtractOptions{Skipped: func(p string, tag uint32) { skipped = append(skipped, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 || !slices.Equal(skipped, []string{"Files/link"}) {
		t.Errorf("Extract = %d names, skipped %q; want 5, [Files/link]", n, skipped)
	}
	// Streams go with the first name extracted (b.txt comes first in
	// directory order), the other names are hard links to it.
	for p, want := range map[string]string{"Sub/a.txt": "alpha", "b.txt": "alpha", "b.txt:zone": "z"} {
		if b, err := os.ReadFile(filepath.Join(dest, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	a, _ := os.Stat(filepath.Join(dest, "Sub/a.txt"))
	b, _ := os.Stat(filepath.Join(dest, "b.txt"))
	if a == nil || b == nil || !os.SameFile(a, b) || !a.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("b.txt is not a hard link of Sub/a.txt with its time")
	}
	if _, err := os.Lstat(filepath.Join(dest, "link")); !os.IsNotExist(err) {
		t.Errorf("the reparse point was extracted (%v)", err)
	}

	// Refusals leave nothing beside dest.
	if _, err := img.Extract(dest, "", ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("extract over an existing dest: %v", err)
	}
	if _, err := img.Extract(filepath.Join(parent, "f"), "Files/b.txt", ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("extract of a file: %v", err)
	}
	if _, err := img.Extract(filepath.Join(parent, "g"), "nope", ExtractOptions{}); err == nil {
		t.Errorf("extract of a missing subtree succeeded")
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 1 {
		t.Errorf("extract left %d entries beside its output", len(ents))
	}
}
