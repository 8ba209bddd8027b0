package cimfs

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadV2 rewrites a written image into the 2.x shape (version 2.0,
// 0x60-byte records without the back-link field) and reads it.
func TestReadV2(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, "v2.cim", nil)
	must(t, err)
	must(t, w.Add("d", FileInfo{Attributes: AttrDirectory}, nil))
	for _, n := range []string{"d/one", "d/two", "three"} {
		must(t, w.Add(n, FileInfo{Attributes: AttrSystem}, strings.NewReader("content of "+n)))
	}
	mustCommit(t, w)
	img := mustOpen(t, filepath.Join(dir, "v2.cim"))
	tab := img.ftd[0]
	img.Close()

	r0 := filepath.Join(dir, regionName(w.guid, 0))
	meta, err := os.ReadFile(r0)
	must(t, err)
	base := int(tab.table.offset())
	for i := range tab.count {
		copy(meta[base+i*recordLenV2:], meta[base+i*recordLenV3:base+i*recordLenV3+recordLenV2])
	}
	// Find the FTD entry (it points at the table) and set its entry size.
	ftd := -1
	for off := regionHeaderLen; off+ftdEntryLen <= len(meta); off += 8 {
		if binary.LittleEndian.Uint64(meta[off:]) == uint64(tab.table) && binary.LittleEndian.Uint16(meta[off+10:]) == recordLenV3 {
			ftd = off
		}
	}
	if ftd < 0 {
		t.Fatal("file table directory not found")
	}
	binary.LittleEndian.PutUint16(meta[ftd+10:], recordLenV2)
	meta[0x10] = 2
	must(t, os.WriteFile(r0, meta, 0o644))
	for _, p := range []string{"v2.cim", regionName(w.guid, 1)} {
		patch(t, filepath.Join(dir, p), 0x10, []byte{2})
	}

	img = mustOpen(t, filepath.Join(dir, "v2.cim"))
	if img.Major != 2 || img.ftd[0].entrySize != recordLenV2 {
		t.Fatalf("version %d, entry size %#x", img.Major, img.ftd[0].entrySize)
	}
	for _, n := range []string{"d/one", "d/two", "three"} {
		if c := content(t, img, n); c != "content of "+n {
			t.Errorf("%s = %q", n, c)
		}
		f, err := img.Stat(n)
		must(t, err)
		if l, err := f.Links(); err != nil || l != nil || f.Attributes != AttrSystem {
			t.Errorf("%s: links %v (%v), attributes %#x", n, l, err, f.Attributes)
		}
	}
}
