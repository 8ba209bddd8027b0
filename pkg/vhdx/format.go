package vhdx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// On-disk layout constants (MS-VHDX 2.x).
const (
	kib = 1 << 10
	mib = 1 << 20

	fileIDOffset   = 0
	header1Offset  = 64 * kib
	header2Offset  = 128 * kib
	region1Offset  = 192 * kib
	region2Offset  = 256 * kib
	headerSize     = 4 * kib
	regionTblSize  = 64 * kib
	metaTableSize  = 64 * kib
	alignment      = mib // every region and payload block is 1 MiB aligned
	maxRegionCount = 2047
	maxMetaEntries = 2047

	// MaxSize is the largest virtual size MS-VHDX allows (64 TiB).
	MaxSize int64 = 64 << 40
	// DefaultBlockSize is the payload block size Windows containers use.
	DefaultBlockSize = 1 * mib
	minBlockSize     = 1 * mib
	maxBlockSize     = 256 * mib
)

var (
	sigFile     = []byte("vhdxfile")
	sigHeader   = []byte("head")
	sigRegion   = []byte("regi")
	sigMetadata = []byte("metadata")
	sigLogEntry = []byte("loge")

	regionBAT      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	regionMetadata = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

	metaFileParams   = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	metaVirtualSize  = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	metaPage83       = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	metaLogicalSect  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	metaPhysicalSect = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	metaParentLoc    = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

	parentLocatorType = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// BAT entry states (bits 0–2 of an entry).
const (
	blockNotPresent       = 0
	blockUndefined        = 1
	blockZero             = 2
	blockUnmapped         = 3
	blockFullyPresent     = 6
	blockPartiallyPresent = 7
	bitmapNotPresent      = 0
	bitmapPresent         = 6

	batStateMask    = 7
	batOffsetShift  = 20 // file offset in MiB lives in bits 20–63
	batReservedMask = (1<<batOffsetShift - 1) &^ batStateMask
)

func batEntry(state uint64, fileOff int64) uint64 {
	return uint64(fileOff)/mib<<batOffsetShift | state
}
func batState(e uint64) uint64 { return e & batStateMask }
func batOffset(e uint64) int64 { return int64(e>>batOffsetShift) * mib }

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// checkCRC verifies the CRC-32C at offset 4 of a structure, computed with
// that field zeroed.
func checkCRC(b []byte) error {
	sum := binary.LittleEndian.Uint32(b[4:])
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint32(c[4:], 0)
	if got := crc(c); got != sum {
		return fmt.Errorf("CRC-32C %#08x, computed %#08x", sum, got)
	}
	return nil
}

// header is one of the two 4 KiB headers.
type header struct {
	seq           uint64
	fileWriteGUID GUID
	dataWriteGUID GUID
	logGUID       GUID
	logVersion    uint16
	version       uint16
	logLength     uint32
	logOffset     uint64
}

func (h *header) encode() []byte {
	b := make([]byte, headerSize)
	le := binary.LittleEndian
	copy(b, sigHeader)
	le.PutUint64(b[8:], h.seq)
	copy(b[16:], h.fileWriteGUID[:])
	copy(b[32:], h.dataWriteGUID[:])
	copy(b[48:], h.logGUID[:])
	le.PutUint16(b[64:], h.logVersion)
	le.PutUint16(b[66:], h.version)
	le.PutUint32(b[68:], h.logLength)
	le.PutUint64(b[72:], h.logOffset)
	le.PutUint32(b[4:], crc(b))
	return b
}

func decodeHeader(b []byte) (*header, error) {
	if !bytes.Equal(b[:4], sigHeader) {
		return nil, fmt.Errorf("signature %q, want \"head\"", b[:4])
	}
	if err := checkCRC(b[:headerSize]); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	h := &header{
		seq: le.Uint64(b[8:]), logVersion: le.Uint16(b[64:]), version: le.Uint16(b[66:]),
		logLength: le.Uint32(b[68:]), logOffset: le.Uint64(b[72:]),
	}
	copy(h.fileWriteGUID[:], b[16:])
	copy(h.dataWriteGUID[:], b[32:])
	copy(h.logGUID[:], b[48:])
	if h.version != 1 {
		return nil, fmt.Errorf("version %d, want 1", h.version)
	}
	if h.logVersion != 0 {
		return nil, fmt.Errorf("log version %d, want 0", h.logVersion)
	}
	if h.logLength%alignment != 0 || h.logOffset%alignment != 0 || h.logOffset < alignment {
		return nil, fmt.Errorf("log at %d length %d is not 1 MiB aligned", h.logOffset, h.logLength)
	}
	return h, nil
}

// region is one entry of a region table.
type region struct {
	guid     GUID
	offset   int64
	length   int64
	required bool
}

func encodeRegionTable(rs []region) []byte {
	b := make([]byte, regionTblSize)
	le := binary.LittleEndian
	copy(b, sigRegion)
	le.PutUint32(b[8:], uint32(len(rs)))
	for i, r := range rs {
		e := b[16+32*i:]
		copy(e, r.guid[:])
		le.PutUint64(e[16:], uint64(r.offset))
		le.PutUint32(e[24:], uint32(r.length))
		if r.required {
			le.PutUint32(e[28:], 1)
		}
	}
	le.PutUint32(b[4:], crc(b))
	return b
}

func decodeRegionTable(b []byte) ([]region, error) {
	if !bytes.Equal(b[:4], sigRegion) {
		return nil, fmt.Errorf("signature %q, want \"regi\"", b[:4])
	}
	if err := checkCRC(b[:regionTblSize]); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	n := le.Uint32(b[8:])
	if n > maxRegionCount {
		return nil, fmt.Errorf("%d entries, at most %d allowed", n, maxRegionCount)
	}
	rs := make([]region, n)
	for i := range rs {
		e := b[16+32*i:]
		copy(rs[i].guid[:], e)
		rs[i].offset = int64(le.Uint64(e[16:]))
		rs[i].length = int64(le.Uint32(e[24:]))
		rs[i].required = le.Uint32(e[28:])&1 != 0
		if rs[i].offset < alignment || rs[i].offset%alignment != 0 || rs[i].length%alignment != 0 {
			return nil, fmt.Errorf("region %s at %d length %d is not 1 MiB aligned", rs[i].guid, rs[i].offset, rs[i].length)
		}
	}
	return rs, nil
}

// metaEntry is one entry of the metadata table; its data is read separately.
type metaEntry struct {
	id            GUID
	offset        uint32 // from the start of the metadata region
	length        uint32
	isUser        bool
	isVirtualDisk bool
	isRequired    bool
}

func encodeMetaTable(es []metaEntry) []byte {
	b := make([]byte, metaTableSize)
	le := binary.LittleEndian
	copy(b, sigMetadata)
	le.PutUint16(b[10:], uint16(len(es)))
	for i, e := range es {
		o := b[32+32*i:]
		copy(o, e.id[:])
		le.PutUint32(o[16:], e.offset)
		le.PutUint32(o[20:], e.length)
		var fl uint32
		if e.isUser {
			fl |= 1
		}
		if e.isVirtualDisk {
			fl |= 2
		}
		if e.isRequired {
			fl |= 4
		}
		le.PutUint32(o[24:], fl)
	}
	return b
}

func decodeMetaTable(b []byte) ([]metaEntry, error) {
	if !bytes.Equal(b[:8], sigMetadata) {
		return nil, fmt.Errorf("metadata table signature %q, want \"metadata\"", b[:8])
	}
	le := binary.LittleEndian
	n := int(le.Uint16(b[10:]))
	if n > maxMetaEntries {
		return nil, fmt.Errorf("metadata table has %d entries, at most %d allowed", n, maxMetaEntries)
	}
	es := make([]metaEntry, n)
	for i := range es {
		o := b[32+32*i:]
		copy(es[i].id[:], o)
		es[i].offset = le.Uint32(o[16:])
		es[i].length = le.Uint32(o[20:])
		fl := le.Uint32(o[24:])
		es[i].isUser, es[i].isVirtualDisk, es[i].isRequired = fl&1 != 0, fl&2 != 0, fl&4 != 0
	}
	return es, nil
}

// encodeLocator encodes a parent locator item: the locator type, then
// key/value entries pointing at UTF-16LE strings after them.
func encodeLocator(kv [][2]string) []byte {
	le := binary.LittleEndian
	head := make([]byte, 20+12*len(kv))
	copy(head, parentLocatorType[:])
	le.PutUint16(head[18:], uint16(len(kv)))
	var strs []byte
	for i, p := range kv {
		k, v := utf16le.Encode(p[0]), utf16le.Encode(p[1])
		e := head[20+12*i:]
		le.PutUint32(e[0:], uint32(len(head)+len(strs)))
		strs = append(strs, k...)
		le.PutUint32(e[4:], uint32(len(head)+len(strs)))
		strs = append(strs, v...)
		le.PutUint16(e[8:], uint16(len(k)))
		le.PutUint16(e[10:], uint16(len(v)))
	}
	return append(head, strs...)
}

func decodeLocator(b []byte) (map[string]string, error) {
	if len(b) < 20 {
		return nil, fmt.Errorf("parent locator of %d bytes is too short", len(b))
	}
	var typ GUID
	copy(typ[:], b)
	if typ != parentLocatorType {
		return nil, fmt.Errorf("parent locator type %s is not the VHDX one", typ)
	}
	le := binary.LittleEndian
	n := int(le.Uint16(b[18:]))
	if 20+12*n > len(b) {
		return nil, fmt.Errorf("parent locator: %d entries do not fit in %d bytes", n, len(b))
	}
	kv := make(map[string]string, n)
	str := func(off uint32, l uint16) (string, error) {
		if int64(off)+int64(l) > int64(len(b)) || l%2 != 0 || l == 0 {
			return "", fmt.Errorf("parent locator: string at %d length %d out of bounds", off, l)
		}
		return fromUTF16le(b[off : off+uint32(l)]), nil
	}
	for i := 0; i < n; i++ {
		e := b[20+12*i:]
		k, err := str(le.Uint32(e[0:]), le.Uint16(e[8:]))
		if err != nil {
			return nil, err
		}
		v, err := str(le.Uint32(e[4:]), le.Uint16(e[10:]))
		if err != nil {
			return nil, err
		}
		kv[k] = v
	}
	return kv, nil
}

// fromUTF16le decodes a UTF-16LE string, dropping trailing NULs.
func fromUTF16le(b []byte) string { return strings.TrimRight(utf16le.Decode(b), "\x00") }
