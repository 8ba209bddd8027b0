package cimfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unicode/utf16"
)

// A link table maps names to fixed-size values: directory entries (FileID),
// alternate streams (Stream) and, in 3.0, back links (parent FileID).
// Layout: Length u32 | Count u32 | Values[Count] | NameOffsets[Count] u32 |
// names (u16 length in UTF-16 units + the units), offsets from the table start.
type linkEntry struct {
	name  []uint16
	value []byte
}

// encodeLinkTable sorts entries by upcased name and lays the table out.
func encodeLinkTable(up []uint16, entries []linkEntry, valueSize int) []byte {
	slices.SortStableFunc(entries, func(a, b linkEntry) int { return compareNames(up, a.name, b.name) })
	n := len(entries)
	size := 8 + n*(valueSize+4)
	for _, e := range entries {
		size += 2 + 2*len(e.name)
	}
	b := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint32(b, uint32(size))
	le.PutUint32(b[4:], uint32(n))
	pos := 8 + n*(valueSize+4)
	for i, e := range entries {
		copy(b[8+i*valueSize:], e.value)
		le.PutUint32(b[8+n*valueSize+4*i:], uint32(pos))
		le.PutUint16(b[pos:], uint16(len(e.name)))
		for j, u := range e.name {
			le.PutUint16(b[pos+2+2*j:], u)
		}
		pos += 2 + 2*len(e.name)
	}
	return b
}

var errLinkTable = errors.New("corrupt link table")

// linkTable is a link table checked whole, whose entries are decoded on
// demand: holding one costs its size, whatever it claims.
type linkTable struct {
	b         []byte
	n         int
	valueSize int
}

// parseLinkTable checks b (exactly the table's bytes): the count fits and
// is at most MaxDirEntries, and every name lies in the names area without
// sharing bytes with another (names are laid out one after the other), so
// decoding all entries costs at most a few times the table's size.
func parseLinkTable(b []byte, valueSize int) (linkTable, error) {
	le := binary.LittleEndian
	if len(b) < 8 {
		return linkTable{}, fmt.Errorf("%w: %d bytes", errLinkTable, len(b))
	}
	if l := le.Uint32(b); int64(l) != int64(len(b)) {
		return linkTable{}, fmt.Errorf("%w: length field %d, expected %d", errLinkTable, l, len(b))
	}
	n := int64(le.Uint32(b[4:]))
	namesAt := 8 + n*int64(valueSize+4)
	if namesAt > int64(len(b)) {
		return linkTable{}, fmt.Errorf("%w: %d entries do not fit in %d bytes", errLinkTable, n, len(b))
	}
	if n > MaxDirEntries {
		return linkTable{}, fmt.Errorf("%w: %d entries, over the limit of %d (cimfs.MaxDirEntries)", errLinkTable, n, MaxDirEntries)
	}
	t := linkTable{b: b, n: int(n), valueSize: valueSize}
	var names int64
	for i := range t.n {
		no := int64(le.Uint32(b[8+t.n*valueSize+4*i:]))
		if no < namesAt || no+2 > int64(len(b)) {
			return linkTable{}, fmt.Errorf("%w: name offset %#x out of range", errLinkTable, no)
		}
		nl := int64(le.Uint16(b[no:]))
		if no+2+2*nl > int64(len(b)) || nl == 0 {
			return linkTable{}, fmt.Errorf("%w: name at %#x (length %d) out of range", errLinkTable, no, nl)
		}
		if names += 2 + 2*nl; names > int64(len(b))-namesAt {
			return linkTable{}, fmt.Errorf("%w: names overlap (%d bytes of names in a %d-byte area)", errLinkTable, names, int64(len(b))-namesAt)
		}
	}
	return t, nil
}

// entry decodes entry i (0 <= i < t.n) of a parsed table.
func (t linkTable) entry(i int) linkEntry {
	le := binary.LittleEndian
	vo := 8 + i*t.valueSize
	no := int(le.Uint32(t.b[8+t.n*t.valueSize+4*i:]))
	name := make([]uint16, le.Uint16(t.b[no:]))
	for j := range name {
		name[j] = le.Uint16(t.b[no+2+2*j:])
	}
	return linkEntry{name: name, value: t.b[vo : vo+t.valueSize]}
}

// decodeLinkTable parses b (exactly the table's bytes) and decodes every entry.
func decodeLinkTable(b []byte, valueSize int) ([]linkEntry, error) {
	t, err := parseLinkTable(b, valueSize)
	if err != nil {
		return nil, err
	}
	out := make([]linkEntry, t.n)
	for i := range out {
		out[i] = t.entry(i)
	}
	return out, nil
}

func encodeName(s string) []uint16 { return utf16.Encode([]rune(s)) }
func decodeName(u []uint16) string { return string(utf16.Decode(u)) }
