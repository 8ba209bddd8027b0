package cimfs

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/layervisor/layervisor/pkg/winguid"
)

// On-disk constants (see the package doc for where each comes from).
const (
	magic = "cimfile0"

	hdrTypeImage    = 0
	hdrTypeRegion   = 1
	hdrTypeObjectID = 2

	imageHeaderLen    = 0x48
	regionHeaderLen   = 0x28
	objectIDHeaderLen = 0x30
	objectIDEntryLen  = 0x28
	regionSetLen      = 0x18

	// Region kinds as the RegionHeader and ObjectIdHeader Type byte store them.
	regionMetadata  = 0
	regionData      = 1
	regionSmallData = 2

	filesystemLen = 0x18
	ftdEntryLen   = 0x10
	recordLenV2   = 0x60
	recordLenV3   = 0x68
	filesPerTable = 1024

	streamData      = 0
	streamLinkTable = 1
	streamPeImage   = 2

	upcaseEntries = 0x10000
	upcaseLen     = 2 * upcaseEntries
	pageSize      = 4096
	maxNameLen    = 255 // UTF-16 code units

	// Files smaller than this go to the small-data region (8-byte aligned),
	// the others to the data region (page aligned). An assumption: the real
	// image only shows that 12 bytes are "small".
	smallFileMax = pageSize - 1

	currentMajor = 3
	minMajor     = 2
)

// Win32 FILE_ATTRIBUTE_* bits this format knows.
const (
	AttrReadonly     = 0x1
	AttrHidden       = 0x2
	AttrSystem       = 0x4
	AttrDirectory    = 0x10
	AttrArchive      = 0x20
	AttrNormal       = 0x80
	AttrSparse       = 0x200
	AttrReparsePoint = 0x400
)

// File record Flags bits and the attributes they stand for.
var flagAttrs = [...]struct {
	flag uint16
	attr uint32
}{
	{0x1, AttrReadonly}, {0x2, AttrHidden}, {0x4, AttrSystem}, {0x8, AttrArchive}, {0x10, AttrSparse},
}

func attrsToFlags(a uint32) uint16 {
	var f uint16
	for _, fa := range flagAttrs {
		if a&fa.attr != 0 {
			f |= fa.flag
		}
	}
	return f
}

func flagsToAttrs(f uint16) uint32 {
	var a uint32
	for _, fa := range flagAttrs {
		if f&fa.flag != 0 {
			a |= fa.attr
		}
	}
	return a
}

// regionOffset is the on-disk pointer: region index in bits 63..48, byte
// offset in that region file in bits 47..0; 0 means "no object".
type regionOffset uint64

func makeRO(index int, off int64) regionOffset {
	return regionOffset(uint64(index)<<48 | uint64(off))
}

func (ro regionOffset) index() int    { return int(ro >> 48) }
func (ro regionOffset) offset() int64 { return int64(ro & (1<<48 - 1)) }

func (ro regionOffset) String() string {
	return fmt.Sprintf("region %d offset %#x", ro.index(), ro.offset())
}

// stream is the 16-byte Stream structure: data location, then length
// (bits 0..47), type (48..55) and the sparse bit (56).
type stream struct {
	ro     regionOffset
	length int64
	typ    uint8
	sparse bool
}

func (s stream) put(b []byte) {
	binary.LittleEndian.PutUint64(b, uint64(s.ro))
	v := uint64(s.length) | uint64(s.typ)<<48
	if s.sparse {
		v |= 1 << 56
	}
	binary.LittleEndian.PutUint64(b[8:], v)
}

func getStream(b []byte) stream {
	v := binary.LittleEndian.Uint64(b[8:])
	return stream{
		ro:     regionOffset(binary.LittleEndian.Uint64(b)),
		length: int64(v & (1<<48 - 1)),
		typ:    uint8(v >> 48),
		sparse: v&(1<<56) != 0,
	}
}

// record is a File record (0x68 bytes in format 3.0, 0x60 in 2.x).
type record struct {
	flags       uint16
	eaLength    uint16
	reparseTag  uint32
	times       [4]uint64 // creation, last write, change, last access (FILETIME)
	data        stream
	sd          regionOffset
	ea          regionOffset
	reparse     regionOffset
	streamTable regionOffset
	parentID    uint32 // 3.0: the parent directory's FileID (the root's is itself)
	baseRegion  uint16
	backLinks   regionOffset // 3.0: link table of (parent FileID, name) per name
}

func (r *record) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint16(b[0:], r.flags)
	le.PutUint16(b[2:], r.eaLength)
	le.PutUint32(b[4:], r.reparseTag)
	for i, t := range r.times {
		le.PutUint64(b[8+8*i:], t)
	}
	r.data.put(b[0x28:])
	le.PutUint64(b[0x38:], uint64(r.sd))
	le.PutUint64(b[0x40:], uint64(r.ea))
	le.PutUint64(b[0x48:], uint64(r.reparse))
	le.PutUint64(b[0x50:], uint64(r.streamTable))
	le.PutUint32(b[0x58:], r.parentID)
	le.PutUint16(b[0x5c:], r.baseRegion)
	le.PutUint64(b[0x60:], uint64(r.backLinks))
}

// getRecord decodes a record from b, which is zero-padded to recordLenV3.
func getRecord(b []byte) record {
	le := binary.LittleEndian
	r := record{
		flags:       le.Uint16(b[0:]),
		eaLength:    le.Uint16(b[2:]),
		reparseTag:  le.Uint32(b[4:]),
		data:        getStream(b[0x28:]),
		sd:          regionOffset(le.Uint64(b[0x38:])),
		ea:          regionOffset(le.Uint64(b[0x40:])),
		reparse:     regionOffset(le.Uint64(b[0x48:])),
		streamTable: regionOffset(le.Uint64(b[0x50:])),
		parentID:    le.Uint32(b[0x58:]),
		baseRegion:  le.Uint16(b[0x5c:]),
		backLinks:   regionOffset(le.Uint64(b[0x60:])),
	}
	for i := range r.times {
		r.times[i] = le.Uint64(b[8+8*i:])
	}
	return r
}

// putCommonHeader writes the 0x20-byte header every CimFS file starts with.
func putCommonHeader(b []byte, headerLen uint32, typ uint8) {
	copy(b, magic)
	binary.LittleEndian.PutUint32(b[8:], headerLen)
	b[0x0c] = typ
	binary.LittleEndian.PutUint32(b[0x10:], currentMajor)
}

// GUID is a Windows GUID in its on-disk byte order; String prints it as
// Windows names region files (lowercase, no braces).
type GUID = winguid.GUID

func newGUID() (GUID, error) { return winguid.New(), nil }

func regionName(g GUID, i int) string   { return fmt.Sprintf("region_%s_%d", g, i) }
func objectIDName(g GUID, i int) string { return fmt.Sprintf("objectid_%s_%d", g, i) }

// RegionSet names one image's region files: region_<ID>_0 … _<Count-1>.
type RegionSet struct {
	ID    GUID
	Count int
}

// FILETIME conversion: 100 ns ticks since 1601-01-01 UTC; 0 is the zero Time.
var epoch1601 = time.Date(1601, 1, 1, 0, 0, 0, 0, time.UTC)

const ticksTo1970 = 116444736000000000

func filetimeToTime(ft uint64) time.Time {
	if ft == 0 {
		return time.Time{}
	}
	// Split to stay inside time.Duration's range.
	return time.Unix(int64(ft/1e7)-ticksTo1970/1e7, int64(ft%1e7)*100).UTC()
}

func timeToFiletime(t time.Time) (uint64, error) {
	if t.IsZero() {
		return 0, nil
	}
	if t.Before(epoch1601) {
		return 0, fmt.Errorf("time %v is before 1601", t)
	}
	return uint64(t.Unix()+ticksTo1970/1e7)*1e7 + uint64(t.Nanosecond()/100), nil
}

// splitPath turns "a/b\\c" into components, checking each is a valid name.
// "" and "/" are the root.
func splitPath(p string) ([]string, error) {
	p = strings.ReplaceAll(p, "\\", "/")
	p = strings.Trim(p, "/")
	if p == "" {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	for _, c := range parts {
		if err := checkName(c); err != nil {
			return nil, fmt.Errorf("path %q: %w", p, err)
		}
	}
	return parts, nil
}

func checkName(c string) error {
	switch {
	case c == "" || c == "." || c == "..":
		return fmt.Errorf("invalid name %q", c)
	case strings.ContainsAny(c, ":\x00"):
		return fmt.Errorf("name %q has ':' or NUL", c)
	case utf16Len(c) > maxNameLen:
		return fmt.Errorf("name %q longer than %d UTF-16 units", c, maxNameLen)
	}
	return nil
}

func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		if r >= 0x10000 {
			n += 2
		} else {
			n++
		}
	}
	return n
}

func align(n, a int64) int64 { return (n + a - 1) &^ (a - 1) }
