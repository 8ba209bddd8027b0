package cimfs

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// A PeImage stream stores a PE file laid out for 4 KiB image mapping:
// DataOffset RO | DataLength u64 | ImageLength u32 | MappingCount u16 |
// Flags u16, then MappingCount {FileOffset u32, Delta u32}. File offset o
// lives at DataOffset + o + Delta of the last mapping with FileOffset <= o.
// Only read: the writer stores PE files as plain data.
type peReader struct {
	img      *Image
	data     regionOffset
	dataLen  int64
	mappings []peMapping
	what     string
}

type peMapping struct{ fileOff, delta int64 }

const peHeaderLen = 0x18

func (img *Image) openPE(s stream, what string) (*peReader, error) {
	h, err := img.read(s.ro, peHeaderLen, what+" PE header")
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	pe := &peReader{img: img, data: regionOffset(le.Uint64(h)), dataLen: int64(le.Uint64(h[8:]) &^ (1 << 63)), what: what}
	n := int64(le.Uint16(h[0x14:]))
	m, err := img.read(s.ro+peHeaderLen, 8*n, what+" PE mappings")
	if err != nil {
		return nil, err
	}
	for i := range int(n) {
		pe.mappings = append(pe.mappings, peMapping{int64(le.Uint32(m[8*i:])), int64(le.Uint32(m[8*i+4:]))})
	}
	if len(pe.mappings) == 0 || pe.mappings[0].fileOff != 0 || !sort.SliceIsSorted(pe.mappings, func(i, j int) bool {
		return pe.mappings[i].fileOff < pe.mappings[j].fileOff
	}) {
		return nil, fmt.Errorf("%w: %s: %s: PE mappings missing or out of order", ErrCorrupt, img.path, what)
	}
	if err := img.check(pe.data, pe.dataLen, what+" PE data"); err != nil {
		return nil, err
	}
	return pe, nil
}

func (pe *peReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		o := off + int64(n)
		i := sort.Search(len(pe.mappings), func(i int) bool { return pe.mappings[i].fileOff > o }) - 1
		end := int64(-1)
		if i+1 < len(pe.mappings) {
			end = pe.mappings[i+1].fileOff
		}
		chunk := int64(len(p) - n)
		if end >= 0 && o+chunk > end {
			chunk = end - o
		}
		src := o + pe.mappings[i].delta
		if src < 0 || src+chunk > pe.dataLen {
			return n, fmt.Errorf("%w: %s: %s: PE offset %#x maps outside its data", ErrCorrupt, pe.img.path, pe.what, o)
		}
		rf := pe.img.regions[pe.data.index()]
		m, err := rf.r.ReadAt(p[n:n+int(chunk)], pe.data.offset()+src)
		n += m
		if err != nil && err != io.EOF {
			return n, err
		}
		if m < int(chunk) {
			return n, io.ErrUnexpectedEOF
		}
	}
	return n, nil
}
