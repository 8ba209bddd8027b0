// Package gpt writes and reads GUID Partition Tables (UEFI specification,
// chapter 5): a protective MBR in LBA 0, the primary header in LBA 1 and its
// partition entry array after it, and the backup entry array and header at the
// end of the disk, each with its CRC32.
//
// The disk is any io.WriterAt / io.ReaderAt of a known size (a raw file, or a
// VHDX opened with pkg/vhdx), so a table can be written into a virtual disk
// without materialising it. New partitions are aligned to 1 MiB, as Windows
// and parted do.
package gpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// Alignment is where new partitions start and end: 1 MiB boundaries.
const Alignment = 1 << 20

// Layout constants of the tables this package writes.
const (
	NumEntries   = 128 // entries in each array (the minimum the spec allows for 16 KiB)
	EntrySize    = 128 // bytes per entry
	headerSize   = 92
	revision     = 0x00010000
	maxNameRunes = 36
)

var signature = []byte("EFI PART")

// Well-known partition types.
var (
	// MicrosoftReserved is the MSR partition Windows puts on every GPT disk.
	MicrosoftReserved = MustParseGUID("e3c9e316-0b5c-4db8-817d-f92df00215ae")
	// BasicData is a Windows data partition (NTFS, FAT, ...).
	BasicData = MustParseGUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
	// LinuxFilesystem is a Linux data partition.
	LinuxFilesystem = MustParseGUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
)

// ErrCorrupt reports a table that fails validation.
var ErrCorrupt = errors.New("corrupt GPT")

// Partition is one used entry of the partition array.
type Partition struct {
	Type       GUID   // partition type; zero marks an unused entry
	ID         GUID   // unique partition GUID
	FirstLBA   uint64 // first sector, inclusive
	LastLBA    uint64 // last sector, inclusive
	Attributes uint64
	Name       string // at most 36 UTF-16 code units
}

// Offset is the partition's start in bytes for the given sector size.
func (p Partition) Offset(sectorSize int64) int64 { return int64(p.FirstLBA) * sectorSize }

// Size is the partition's length in bytes for the given sector size.
func (p Partition) Size(sectorSize int64) int64 {
	return int64(p.LastLBA-p.FirstLBA+1) * sectorSize
}

// Table is a disk's partition table.
type Table struct {
	DiskID     GUID
	SectorSize int64 // 512 or 4096
	DiskSize   int64 // bytes; a multiple of SectorSize
	Partitions []Partition
	// FromBackup is set by Read when the primary table was damaged and the
	// backup was used.
	FromBackup bool
}

// New returns an empty table for a disk of size bytes with a random disk GUID.
func New(size, sectorSize int64) (*Table, error) {
	t := &Table{DiskID: NewGUID(), SectorSize: sectorSize, DiskSize: size}
	if err := t.checkGeometry(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Table) checkGeometry() error {
	if t.SectorSize != 512 && t.SectorSize != 4096 {
		return fmt.Errorf("gpt: sector size %d: want 512 or 4096", t.SectorSize)
	}
	if t.DiskSize%t.SectorSize != 0 {
		return fmt.Errorf("gpt: disk size %d is not a multiple of the sector size %d", t.DiskSize, t.SectorSize)
	}
	// Room for MBR, two headers, two arrays and one aligned MiB of data.
	if t.DiskSize < 3*Alignment {
		return fmt.Errorf("gpt: disk size %d is too small (minimum %d)", t.DiskSize, 3*Alignment)
	}
	return nil
}

func (t *Table) lastLBA() uint64 { return uint64(t.DiskSize/t.SectorSize) - 1 }

func (t *Table) arraySectors() uint64 {
	return uint64((NumEntries*EntrySize + t.SectorSize - 1) / t.SectorSize)
}

// FirstUsableLBA is the first sector after the primary entry array.
func (t *Table) FirstUsableLBA() uint64 { return 2 + t.arraySectors() }

// LastUsableLBA is the last sector before the backup entry array.
func (t *Table) LastUsableLBA() uint64 { return t.lastLBA() - 1 - t.arraySectors() }

// Add appends a partition of size bytes (0: the rest of the disk) starting
// at the first 1 MiB boundary after the last partition, ending on a 1 MiB
// boundary, with a random unique GUID. It returns the new partition.
func (t *Table) Add(typ GUID, name string, size int64) (Partition, error) {
	if len(t.Partitions) >= NumEntries {
		return Partition{}, fmt.Errorf("gpt: partition %q: table full", name)
	}
	if len(utf16.Encode([]rune(name))) > maxNameRunes {
		return Partition{}, fmt.Errorf("gpt: partition name %q is longer than %d UTF-16 units", name, maxNameRunes)
	}
	start := int64(Alignment)
	for _, p := range t.Partitions {
		start = max(start, int64(p.LastLBA+1)*t.SectorSize)
	}
	start = alignUp(start, Alignment)
	limit := alignDown(int64(t.LastUsableLBA()+1)*t.SectorSize, Alignment)
	if size == 0 {
		size = limit - start
	}
	size = alignUp(size, Alignment)
	if size <= 0 || start+size > limit {
		return Partition{}, fmt.Errorf("gpt: partition %q of %d bytes at %d does not fit on a %d-byte disk",
			name, size, start, t.DiskSize)
	}
	p := Partition{
		Type: typ, ID: NewGUID(), Name: name,
		FirstLBA: uint64(start / t.SectorSize),
		LastLBA:  uint64((start+size)/t.SectorSize) - 1,
	}
	t.Partitions = append(t.Partitions, p)
	return p, nil
}

func alignUp(n, a int64) int64   { return (n + a - 1) / a * a }
func alignDown(n, a int64) int64 { return n / a * a }

// validate checks the partitions against the geometry.
func (t *Table) validate() error {
	if err := t.checkGeometry(); err != nil {
		return err
	}
	if len(t.Partitions) > NumEntries {
		return fmt.Errorf("gpt: %d partitions, at most %d", len(t.Partitions), NumEntries)
	}
	for i, p := range t.Partitions {
		if p.Type.IsZero() {
			return fmt.Errorf("gpt: partition %d has no type", i+1)
		}
		if p.FirstLBA < t.FirstUsableLBA() || p.LastLBA > t.LastUsableLBA() || p.FirstLBA > p.LastLBA {
			return fmt.Errorf("gpt: partition %d (LBA %d-%d) is outside the usable LBAs %d-%d",
				i+1, p.FirstLBA, p.LastLBA, t.FirstUsableLBA(), t.LastUsableLBA())
		}
		for j, q := range t.Partitions[:i] {
			if p.FirstLBA <= q.LastLBA && q.FirstLBA <= p.LastLBA {
				return fmt.Errorf("gpt: partitions %d and %d overlap", j+1, i+1)
			}
		}
	}
	return nil
}

// entries encodes the partition entry array.
func (t *Table) entries() []byte {
	b := make([]byte, t.arraySectors()*uint64(t.SectorSize))
	for i, p := range t.Partitions {
		e := b[i*EntrySize : (i+1)*EntrySize]
		copy(e[0:], p.Type[:])
		copy(e[16:], p.ID[:])
		binary.LittleEndian.PutUint64(e[32:], p.FirstLBA)
		binary.LittleEndian.PutUint64(e[40:], p.LastLBA)
		binary.LittleEndian.PutUint64(e[48:], p.Attributes)
		for j, u := range utf16.Encode([]rune(p.Name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], u)
		}
	}
	return b
}

// header encodes one header sector.
func (t *Table) header(my, alternate, entriesLBA uint64, entriesCRC uint32) []byte {
	h := make([]byte, t.SectorSize)
	copy(h, signature)
	binary.LittleEndian.PutUint32(h[8:], revision)
	binary.LittleEndian.PutUint32(h[12:], headerSize)
	binary.LittleEndian.PutUint64(h[24:], my)
	binary.LittleEndian.PutUint64(h[32:], alternate)
	binary.LittleEndian.PutUint64(h[40:], t.FirstUsableLBA())
	binary.LittleEndian.PutUint64(h[48:], t.LastUsableLBA())
	copy(h[56:], t.DiskID[:])
	binary.LittleEndian.PutUint64(h[72:], entriesLBA)
	binary.LittleEndian.PutUint32(h[80:], NumEntries)
	binary.LittleEndian.PutUint32(h[84:], EntrySize)
	binary.LittleEndian.PutUint32(h[88:], entriesCRC)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:headerSize]))
	return h
}

// protectiveMBR covers the whole disk (or as much as 32 bits of sectors
// reach) with one partition of type 0xEE, so MBR-only tools leave it alone.
func (t *Table) protectiveMBR() []byte {
	m := make([]byte, t.SectorSize)
	e := m[446:462]
	copy(e[1:4], []byte{0x00, 0x02, 0x00}) // CHS of LBA 1
	e[4] = 0xEE
	copy(e[5:8], []byte{0xFF, 0xFF, 0xFF})
	binary.LittleEndian.PutUint32(e[8:], 1)
	binary.LittleEndian.PutUint32(e[12:], uint32(min(t.lastLBA(), 0xFFFFFFFF)))
	m[510], m[511] = 0x55, 0xAA
	return m
}

// Write writes the protective MBR, the primary header and array, and the
// backup array and header (in that order) to w.
func (t *Table) Write(w io.WriterAt) error {
	if err := t.validate(); err != nil {
		return err
	}
	arr := t.entries()
	crc := crc32.ChecksumIEEE(arr)
	last := t.lastLBA()
	backupArray := last - t.arraySectors()
	ss := t.SectorSize
	writes := []struct {
		lba  uint64
		data []byte
	}{
		{0, t.protectiveMBR()},
		{1, t.header(1, last, 2, crc)},
		{2, arr},
		{backupArray, arr},
		{last, t.header(last, 1, backupArray, crc)},
	}
	for _, wr := range writes {
		if _, err := w.WriteAt(wr.data, int64(wr.lba)*ss); err != nil {
			return fmt.Errorf("gpt: writing LBA %d: %w", wr.lba, err)
		}
	}
	return nil
}

// Read reads the table of a disk of size bytes with the given sector size.
// A primary header or array that fails its CRC or sanity checks is replaced
// by the backup (FromBackup is then set); only when both are bad is it an
// error.
func Read(r io.ReaderAt, size, sectorSize int64) (*Table, error) {
	t := &Table{SectorSize: sectorSize, DiskSize: size}
	if err := t.checkGeometry(); err != nil {
		return nil, err
	}
	primaryErr := t.readAt(r, 1)
	if primaryErr == nil {
		return t, nil
	}
	if err := t.readAt(r, t.lastLBA()); err != nil {
		return nil, fmt.Errorf("%w: primary: %w; backup: %w", ErrCorrupt, primaryErr, err)
	}
	t.FromBackup = true
	return t, nil
}

// readAt reads and checks the header at lba and its entry array.
func (t *Table) readAt(r io.ReaderAt, lba uint64) error {
	ss := t.SectorSize
	h := make([]byte, ss)
	if _, err := r.ReadAt(h, int64(lba)*ss); err != nil {
		return fmt.Errorf("reading header at LBA %d: %w", lba, err)
	}
	if !bytes.Equal(h[:8], signature) {
		return fmt.Errorf("header at LBA %d: no EFI PART signature", lba)
	}
	hs := binary.LittleEndian.Uint32(h[12:])
	if hs < headerSize || int64(hs) > ss {
		return fmt.Errorf("header at LBA %d: header size %d", lba, hs)
	}
	want := binary.LittleEndian.Uint32(h[16:])
	c := bytes.Clone(h[:hs])
	binary.LittleEndian.PutUint32(c[16:], 0)
	if got := crc32.ChecksumIEEE(c); got != want {
		return fmt.Errorf("header at LBA %d: CRC32 %08x, header says %08x", lba, got, want)
	}
	if my := binary.LittleEndian.Uint64(h[24:]); my != lba {
		return fmt.Errorf("header at LBA %d says it is at LBA %d", lba, my)
	}
	first, lastUsable := binary.LittleEndian.Uint64(h[40:]), binary.LittleEndian.Uint64(h[48:])
	entriesLBA := binary.LittleEndian.Uint64(h[72:])
	n, es := binary.LittleEndian.Uint32(h[80:]), binary.LittleEndian.Uint32(h[84:])
	if es < EntrySize || es%8 != 0 || es > 4096 || n > 1<<16 {
		return fmt.Errorf("header at LBA %d: %d entries of %d bytes", lba, n, es)
	}
	arrBytes := int64(n) * int64(es)
	if first > lastUsable || lastUsable > t.lastLBA() ||
		entriesLBA > t.lastLBA() || int64(entriesLBA)*ss+arrBytes > t.DiskSize {
		return fmt.Errorf("header at LBA %d: LBAs out of range for a %d-byte disk", lba, t.DiskSize)
	}
	arr := make([]byte, arrBytes)
	if _, err := r.ReadAt(arr, int64(entriesLBA)*ss); err != nil {
		return fmt.Errorf("reading entries at LBA %d: %w", entriesLBA, err)
	}
	if got, want := crc32.ChecksumIEEE(arr), binary.LittleEndian.Uint32(h[88:]); got != want {
		return fmt.Errorf("entries at LBA %d: CRC32 %08x, header says %08x", entriesLBA, got, want)
	}
	copy(t.DiskID[:], h[56:72])
	t.Partitions = nil
	for i := range int(n) {
		e := arr[i*int(es):]
		var p Partition
		copy(p.Type[:], e[0:16])
		if p.Type.IsZero() {
			continue
		}
		copy(p.ID[:], e[16:32])
		p.FirstLBA = binary.LittleEndian.Uint64(e[32:])
		p.LastLBA = binary.LittleEndian.Uint64(e[40:])
		p.Attributes = binary.LittleEndian.Uint64(e[48:])
		p.Name = decodeName(e[56:128])
		if p.FirstLBA < first || p.LastLBA > lastUsable || p.FirstLBA > p.LastLBA {
			return fmt.Errorf("entry %d: LBAs %d-%d outside %d-%d", i+1, p.FirstLBA, p.LastLBA, first, lastUsable)
		}
		t.Partitions = append(t.Partitions, p)
	}
	return nil
}

func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
