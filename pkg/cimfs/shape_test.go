package cimfs

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestWriterMatchesRealImage writes the real image's tree with its
// metadata and compares every file with what cimfs.dll wrote.
func TestWriterMatchesRealImage(t *testing.T) {
	real, err := Open(filepath.Join(realDir(t), "test.cim"))
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	f, err := real.Stat("hello.txt")
	if err != nil {
		t.Fatal(err)
	}
	info, err := f.Info()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	w, err := Create(out, "test.cim", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add("hello.txt", info, strings.NewReader("Hello world!")); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	g := w.guid.String()
	want := []string{"objectid_" + g + "_0", "objectid_" + g + "_1", "region_" + g + "_0", "region_" + g + "_1", "test.cim"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("files %q, want %q", names, want)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(g) {
		t.Errorf("GUID %q", g)
	}
	for _, kind := range []string{"region", "objectid"} {
		for i := range 2 {
			got, _ := os.ReadFile(filepath.Join(out, kind+"_"+g+"_"+string(rune('0'+i))))
			exp, _ := os.ReadFile(filepath.Join(realDir(t), kind+"_"+realGUID+"_"+string(rune('0'+i))))
			if len(exp) == 0 || !bytes.Equal(got, exp) {
				t.Errorf("%s %d differs from cimfs.dll's (%d vs %d bytes) at %#x", kind, i, len(got), len(exp), firstDiff(got, exp))
			}
		}
	}
	got, _ := os.ReadFile(filepath.Join(out, "test.cim"))
	exp, _ := os.ReadFile(filepath.Join(realDir(t), "test.cim"))
	// Only the GUID and two reserved fields (non-zero in cimfs.dll's file) may differ.
	for _, r := range [][2]int{{0x18, 0x20}, {0x20, 0x30}, {0x40, 0x46}} {
		copy(got[r[0]:r[1]], exp[r[0]:r[1]])
	}
	if !bytes.Equal(got, exp) {
		t.Errorf(".cim header differs at %#x:\n%x\n%x", firstDiff(got, exp), got, exp)
	}
	// And the result reads back like the original.
	img, err := Open(filepath.Join(out, "test.cim"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Major != 3 || img.Regions() != 2 {
		t.Errorf("version %d, %d regions", img.Major, img.Regions())
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
