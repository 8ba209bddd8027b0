package cimfs

import (
	"bytes"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestFork(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, "base.cim", nil)
	must(t, err)
	must(t, w.Add("a.txt", FileInfo{SecurityDescriptor: sdA}, strings.NewReader("base a")))
	must(t, w.Add("keep.txt", FileInfo{Attributes: AttrHidden}, strings.NewReader("kept")))
	must(t, w.AddAlternateStream("keep.txt", "s1", strings.NewReader("stream one")))
	must(t, w.Add("d", FileInfo{Attributes: AttrDirectory}, nil))
	must(t, w.Add("d/x", FileInfo{}, strings.NewReader("x")))
	must(t, w.AddLink("keep.txt", "d/keep-link"))
	mustCommit(t, w)
	base := mustOpen(t, filepath.Join(dir, "base.cim"))

	w, err = Create(dir, "child.cim", base)
	must(t, err)
	must(t, w.Add("a.txt", FileInfo{SecurityDescriptor: sdB}, strings.NewReader("child a"))) // replace
	must(t, w.Remove("d/x"))
	must(t, w.Add("new.txt", FileInfo{EAs: ea("NEW", "1")}, strings.NewReader("new")))
	must(t, w.AddAlternateStream("keep.txt", "s2", strings.NewReader("stream two")))
	mustCommit(t, w)
	child := mustOpen(t, filepath.Join(dir, "child.cim"))

	if len(child.Parents) != 1 || child.Parents[0] != base.Own || child.Regions() != base.Regions()+2 {
		t.Fatalf("child parents %v, %d regions (base %d)", child.Parents, child.Regions(), base.Regions())
	}
	var paths []string
	must(t, child.Walk(func(p string, f *File) error { paths = append(paths, p); return nil }))
	if got := strings.Join(paths, "|"); got != "|a.txt|d|d/keep-link|keep.txt|new.txt" {
		t.Errorf("child tree %s", got)
	}
	if c := content(t, child, "a.txt"); c != "child a" {
		t.Errorf("a.txt = %q", c)
	}
	keep, err := child.Stat("keep.txt")
	must(t, err)
	if c := content(t, child, "keep.txt"); c != "kept" || keep.Attributes != AttrHidden {
		t.Errorf("keep.txt = %q attrs %#x", c, keep.Attributes)
	}
	// Unchanged content is not copied: it still lives in the base's region.
	if keep.rec.data.ro.index() >= base.Regions() {
		t.Errorf("keep.txt data at %v, not in the base's regions", keep.rec.data.ro)
	}
	ss, err := keep.Streams()
	must(t, err)
	if len(ss) != 2 || ss[0].Name != "s1" || ss[1].Name != "s2" {
		t.Errorf("keep.txt streams %+v", ss)
	}
	if kl, _ := child.Stat("d/keep-link"); kl == nil || kl.ID != keep.ID {
		t.Errorf("hard link lost in the fork: %+v", kl)
	}
	nf, err := child.Stat("new.txt")
	must(t, err)
	if e, _ := nf.EAs(); !bytes.Equal(e, ea("NEW", "1")) {
		t.Errorf("new.txt EAs %x", e)
	}
	a, _ := child.Stat("a.txt")
	if sd, _ := a.SecurityDescriptor(); !bytes.Equal(sd, sdB) {
		t.Errorf("a.txt SD %x", sd)
	}
	// The base is untouched.
	if c := content(t, base, "a.txt"); c != "base a" {
		t.Errorf("base a.txt = %q", c)
	}
	if _, err := base.Stat("d/x"); err != nil {
		t.Errorf("base lost d/x: %v", err)
	}

	// A grandchild sees all three region sets and the merged view.
	w, err = Create(dir, "grand.cim", child)
	must(t, err)
	must(t, w.Remove("keep.txt"))
	mustCommit(t, w)
	grand := mustOpen(t, filepath.Join(dir, "grand.cim"))
	if len(grand.Parents) != 2 || grand.Parents[0] != base.Own || grand.Parents[1] != child.Own {
		t.Errorf("grandchild parents %v", grand.Parents)
	}
	if _, err := grand.Stat("keep.txt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removed keep.txt: %v", err)
	}
	if c := content(t, grand, "d/keep-link"); c != "kept" {
		t.Errorf("d/keep-link = %q", c)
	}
	if c := content(t, grand, "new.txt"); c != "new" {
		t.Errorf("new.txt = %q", c)
	}

	// Forks must live beside their parent.
	if _, err := Create(t.TempDir(), "elsewhere.cim", base); err == nil {
		t.Error("fork in another directory accepted")
	}
}
