package cimfs

import (
	"bytes"
	"encoding/binary"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadPeImage turns a file's DefaultStream into a PeImage stream (the
// writer never makes one) and reads it through its mappings.
func TestReadPeImage(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, "pe.cim", nil)
	must(t, err)
	// Stored layout: "AAAAAAAA" + 8 bytes of gap + "BBBBBBBB"; file offset 8
	// maps to stored offset 16.
	must(t, w.Add("raw", FileInfo{}, strings.NewReader("AAAAAAAAxxxxxxxxBBBBBBBB")))
	must(t, w.Add("pe", FileInfo{}, bytes.NewReader(make([]byte, peHeaderLen+16))))
	mustCommit(t, w)
	img := mustOpen(t, filepath.Join(dir, "pe.cim"))
	raw, err := img.Stat("raw")
	must(t, err)
	pe, err := img.Stat("pe")
	must(t, err)
	img.Close()

	le := binary.LittleEndian
	hdr := make([]byte, peHeaderLen+16)
	le.PutUint64(hdr, uint64(raw.rec.data.ro))
	le.PutUint64(hdr[8:], 24)
	le.PutUint32(hdr[0x10:], 16)
	le.PutUint16(hdr[0x14:], 2)
	le.PutUint32(hdr[peHeaderLen+8:], 8) // second mapping: file offset 8, delta 8
	le.PutUint32(hdr[peHeaderLen+12:], 8)
	patch(t, filepath.Join(dir, regionName(w.guid, 1)), int(pe.rec.data.ro.offset()), hdr)
	// Point the record's stream at the header, type PeImage, length 16.
	s := pe.rec.data
	s.typ, s.length = streamPeImage, 16
	st := make([]byte, 16)
	s.put(st)
	recOff := int(img.ftd[0].table.offset()) + int(pe.ID-1)*recordLenV3 + 0x28
	patch(t, filepath.Join(dir, regionName(w.guid, 0)), recOff, st)

	img = mustOpen(t, filepath.Join(dir, "pe.cim"))
	r, err := img.Open("pe")
	must(t, err)
	b, err := io.ReadAll(r)
	must(t, err)
	if string(b) != "AAAAAAAABBBBBBBB" {
		t.Errorf("PE content %q", b)
	}
	part := make([]byte, 4)
	if _, err := r.ReadAt(part, 6); err != nil || string(part) != "AABB" {
		t.Errorf("read across mappings: %q %v", part, err)
	}
}
