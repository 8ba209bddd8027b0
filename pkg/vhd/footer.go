package vhd

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// FooterSize is the size of a VHD footer in bytes.
const FooterSize = 512

// Disk types.
const (
	DiskTypeFixed        = 2
	DiskTypeDynamic      = 3
	DiskTypeDifferencing = 4
)

const (
	cookie            = "conectix"
	featuresReserved  = 2
	formatVersion     = 0x00010000
	fixedDataOffset   = ^uint64(0)
	creatorVersion    = 0x00010000
	vhdEpochUnix      = 946684800 // 2000-01-01T00:00:00Z
	maxGeometrySector = 65535 * 16 * 255
)

// ErrNoFooter means the data does not end with a VHD footer.
var ErrNoFooter = errors.New("no VHD footer (missing \"conectix\" cookie)")

// Geometry is the CHS geometry recorded in the footer.
type Geometry struct {
	Cylinders       uint16 `json:"cylinders"`
	Heads           uint8  `json:"heads"`
	SectorsPerTrack uint8  `json:"sectorsPerTrack"`
}

// Sectors is the number of sectors the geometry addresses.
func (g Geometry) Sectors() int64 {
	return int64(g.Cylinders) * int64(g.Heads) * int64(g.SectorsPerTrack)
}

// Footer is the decoded VHD footer.
type Footer struct {
	Features       uint32    `json:"features"`
	FormatVersion  uint32    `json:"formatVersion"`
	DataOffset     uint64    `json:"dataOffset"`
	Timestamp      time.Time `json:"timestamp"`
	CreatorApp     [4]byte   `json:"creatorApp"`
	CreatorVersion uint32    `json:"creatorVersion"`
	CreatorHostOS  [4]byte   `json:"creatorHostOS"`
	OriginalSize   uint64    `json:"originalSize"`
	CurrentSize    uint64    `json:"currentSize"`
	Geometry       Geometry  `json:"geometry"`
	DiskType       uint32    `json:"diskType"`
	Checksum       uint32    `json:"checksum"`
	UniqueID       [16]byte  `json:"uniqueID"`
	SavedState     uint8     `json:"savedState"`
}

// GeometryFor computes the CHS geometry for a disk of size bytes with the
// algorithm of the VHD specification (appendix "CHS calculation").
func GeometryFor(size int64) Geometry {
	total := size / 512
	if total > maxGeometrySector {
		total = maxGeometrySector
	}
	var spt, heads, cth int64
	if total >= 65535*16*63 {
		spt, heads = 255, 16
		cth = total / spt
	} else {
		spt = 17
		cth = total / spt
		heads = (cth + 1023) / 1024
		if heads < 4 {
			heads = 4
		}
		if cth >= heads*1024 || heads > 16 {
			spt, heads = 31, 16
			cth = total / spt
		}
		if cth >= heads*1024 {
			spt, heads = 63, 16
			cth = total / spt
		}
	}
	return Geometry{Cylinders: uint16(cth / heads), Heads: uint8(heads), SectorsPerTrack: uint8(spt)}
}

// NewFixedFooter returns the footer of a fixed disk of size bytes.
func NewFixedFooter(size int64) (*Footer, error) {
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("vhd: fixed disk size %d is not a positive multiple of 512", size)
	}
	return newFooter(size, DiskTypeFixed, fixedDataOffset)
}

// newFooter returns a footer with a fresh unique id; dataOffset is where a
// dynamic disk's header is (none for a fixed disk).
func newFooter(size int64, diskType uint32, dataOffset uint64) (*Footer, error) {
	f := &Footer{
		Features:       featuresReserved,
		FormatVersion:  formatVersion,
		DataOffset:     dataOffset,
		Timestamp:      time.Now().UTC().Truncate(time.Second),
		CreatorApp:     [4]byte{'l', 'y', 'v', 's'},
		CreatorVersion: creatorVersion,
		CreatorHostOS:  [4]byte{'W', 'i', '2', 'k'},
		OriginalSize:   uint64(size),
		CurrentSize:    uint64(size),
		Geometry:       GeometryFor(size),
		DiskType:       diskType,
	}
	if _, err := rand.Read(f.UniqueID[:]); err != nil {
		return nil, fmt.Errorf("vhd: unique id: %w", err)
	}
	return f, nil
}

// MarshalBinary encodes the footer, computing its checksum.
func (f *Footer) MarshalBinary() ([]byte, error) {
	b := f.encode()
	f.Checksum = checksum(b)
	binary.BigEndian.PutUint32(b[64:], f.Checksum)
	return b, nil
}

func (f *Footer) encode() []byte {
	b := make([]byte, FooterSize)
	be := binary.BigEndian
	copy(b[0:8], cookie)
	be.PutUint32(b[8:], f.Features)
	be.PutUint32(b[12:], f.FormatVersion)
	be.PutUint64(b[16:], f.DataOffset)
	ts := f.Timestamp.Unix() - vhdEpochUnix
	if ts < 0 {
		ts = 0
	}
	be.PutUint32(b[24:], uint32(ts))
	copy(b[28:32], f.CreatorApp[:])
	be.PutUint32(b[32:], f.CreatorVersion)
	copy(b[36:40], f.CreatorHostOS[:])
	be.PutUint64(b[40:], f.OriginalSize)
	be.PutUint64(b[48:], f.CurrentSize)
	be.PutUint16(b[56:], f.Geometry.Cylinders)
	b[58] = f.Geometry.Heads
	b[59] = f.Geometry.SectorsPerTrack
	be.PutUint32(b[60:], f.DiskType)
	copy(b[68:84], f.UniqueID[:])
	b[84] = f.SavedState
	return b
}

// checksum is the footer's checksum.
func checksum(b []byte) uint32 { return checksumAt(b, 64) }

// checksumAt is the one's complement of the byte sum of b, leaving out the
// 4-byte checksum field at field (the footer's and the dynamic header's
// checksums are computed alike).
func checksumAt(b []byte, field int) uint32 {
	var sum uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			sum += uint32(c)
		}
	}
	return ^sum
}

// ParseFooter decodes and validates a 512-byte footer.
func ParseFooter(b []byte) (*Footer, error) {
	if len(b) < FooterSize {
		return nil, fmt.Errorf("vhd: footer is %d bytes, want %d", len(b), FooterSize)
	}
	b = b[:FooterSize]
	if !bytes.Equal(b[:8], []byte(cookie)) {
		return nil, ErrNoFooter
	}
	be := binary.BigEndian
	f := &Footer{
		Features:       be.Uint32(b[8:]),
		FormatVersion:  be.Uint32(b[12:]),
		DataOffset:     be.Uint64(b[16:]),
		Timestamp:      time.Unix(int64(be.Uint32(b[24:]))+vhdEpochUnix, 0).UTC(),
		CreatorVersion: be.Uint32(b[32:]),
		OriginalSize:   be.Uint64(b[40:]),
		CurrentSize:    be.Uint64(b[48:]),
		Geometry:       Geometry{be.Uint16(b[56:]), b[58], b[59]},
		DiskType:       be.Uint32(b[60:]),
		Checksum:       be.Uint32(b[64:]),
		SavedState:     b[84],
	}
	copy(f.CreatorApp[:], b[28:32])
	copy(f.CreatorHostOS[:], b[36:40])
	copy(f.UniqueID[:], b[68:84])
	if want := checksum(b); want != f.Checksum {
		return nil, fmt.Errorf("vhd: footer checksum %#08x, computed %#08x", f.Checksum, want)
	}
	if f.FormatVersion != formatVersion {
		return nil, fmt.Errorf("vhd: unsupported format version %#08x", f.FormatVersion)
	}
	switch f.DiskType {
	case DiskTypeFixed, DiskTypeDynamic, DiskTypeDifferencing:
	default:
		return nil, fmt.Errorf("vhd: unknown disk type %d", f.DiskType)
	}
	return f, nil
}

// AppendFixedFooter appends a fixed-disk footer to the file, whose current
// length is the disk size (a multiple of 512).
func AppendFixedFooter(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	ft, err := NewFixedFooter(st.Size())
	if err != nil {
		return fmt.Errorf("vhd: %s: %w", f.Name(), err)
	}
	b, _ := ft.MarshalBinary()
	if _, err := f.WriteAt(b, st.Size()); err != nil {
		return fmt.Errorf("vhd: append footer to %s: %w", f.Name(), err)
	}
	return nil
}

// ReadFooter reads and validates the footer at the end of r, whose total
// size is size.
func ReadFooter(r io.ReaderAt, size int64) (*Footer, error) {
	if size < FooterSize {
		return nil, fmt.Errorf("vhd: file of %d bytes is too small for a footer", size)
	}
	b := make([]byte, FooterSize)
	if _, err := r.ReadAt(b, size-FooterSize); err != nil {
		return nil, fmt.Errorf("vhd: read footer: %w", err)
	}
	return ParseFooter(b)
}

// CheckFile validates the footer of a VHD file beyond its checksum: a fixed
// disk's data must fill the file before the footer, and the CHS geometry
// must be the one the specification computes for its size, since tools
// that do not trust the size field derive the disk size from it.
func CheckFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	ft, err := ReadFooter(f, st.Size())
	if err != nil {
		if _, derr := readDynamic(f, path); derr == nil {
			return nil // dynamic VHD with a damaged tail footer but a good copy at 0
		}
		return fmt.Errorf("vhd: %s: %w", path, err)
	}
	if ft.DiskType == DiskTypeFixed && int64(ft.CurrentSize) != st.Size()-FooterSize {
		return fmt.Errorf("vhd: %s: footer says %d bytes of data, the file holds %d", path, ft.CurrentSize, st.Size()-FooterSize)
	}
	if want := GeometryFor(int64(ft.CurrentSize)); ft.Geometry != want {
		return fmt.Errorf("vhd: %s: CHS geometry %d/%d/%d, want %d/%d/%d for %d bytes", path,
			ft.Geometry.Cylinders, ft.Geometry.Heads, ft.Geometry.SectorsPerTrack,
			want.Cylinders, want.Heads, want.SectorsPerTrack, ft.CurrentSize)
	}
	if ft.DiskType != DiskTypeFixed {
		if _, err := readDynamic(f, path); err != nil {
			return fmt.Errorf("vhd: %s: %w", path, err)
		}
	}
	return nil
}
