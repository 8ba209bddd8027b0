package regf

import (
	"fmt"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// leafMax is the most entries one lh list holds; keys with more subkeys get
// an ri list over several lh lists.
const leafMax = 1012

// writer lays cells out in hive bins. Offsets are relative to the first bin.
type writer struct {
	buf     []byte
	pos     int // next free byte in the current bin
	sk      map[string]uint32
	skOrder []uint32
	skRefs  map[uint32]uint32
	layered bool
}

// Marshal writes the hive as a new, compact hive file.
func (h *Hive) Marshal() ([]byte, error) {
	if h.Root == nil {
		return nil, fmt.Errorf("hive has no root key")
	}
	w := &writer{sk: map[string]uint32{}, skRefs: map[uint32]uint32{}, layered: h.Layered}
	w.newBin(binAlign)
	rootSD := h.Root.Security
	if rootSD == nil {
		rootSD = DefaultSecurity()
	}
	rootOff, err := w.writeKey(h.Root, noCell, rootSD, 0)
	if err != nil {
		return nil, err
	}
	w.linkSecurity()
	w.closeBin()

	out := make([]byte, baseBlockSize, baseBlockSize+len(w.buf))
	seq := h.sequence + 1
	copy(out, "regf")
	le.PutUint32(out[4:], seq)
	le.PutUint32(out[8:], seq)
	le.PutUint64(out[12:], toFiletime(h.Modified))
	minor := uint32(5)
	if h.Layered {
		minor = 6
		le.PutUint32(out[144:], flagLayered)
	}
	le.PutUint32(out[20:], 1)
	le.PutUint32(out[24:], minor)
	le.PutUint32(out[28:], 0) // primary file
	le.PutUint32(out[32:], 1) // direct memory load
	le.PutUint32(out[36:], rootOff)
	le.PutUint32(out[40:], uint32(len(w.buf)))
	le.PutUint32(out[44:], 1) // clustering factor
	name := utf16le.Encode(h.FileName)
	copy(out[48:], name[max(0, len(name)-62):]) // the last 31 characters
	FixChecksum(out)
	return append(out, w.buf...), nil
}

func (w *writer) newBin(size int) {
	start := len(w.buf)
	w.buf = append(w.buf, make([]byte, size)...)
	b := w.buf[start:]
	copy(b, "hbin")
	le.PutUint32(b[4:], uint32(start))
	le.PutUint32(b[8:], uint32(size))
	w.pos = start + binHeaderSize
}

// closeBin marks the rest of the current bin as one free cell.
func (w *writer) closeBin() {
	if rest := len(w.buf) - w.pos; rest > 0 {
		le.PutUint32(w.buf[w.pos:], uint32(rest))
		w.pos = len(w.buf)
	}
}

// alloc reserves an allocated cell for n bytes of data and returns its
// offset. Cells are 8-byte aligned and never cross a bin.
func (w *writer) alloc(n int) uint32 {
	size := (n + 4 + 7) &^ 7
	if len(w.buf)-w.pos < size {
		w.closeBin()
		w.newBin((binHeaderSize + size + binAlign - 1) &^ (binAlign - 1))
	}
	off := w.pos
	le.PutUint32(w.buf[off:], uint32(-int32(size)))
	w.pos += size
	return uint32(off)
}

// cellData is the data area of the cell at off.
func (w *writer) cellData(off uint32) []byte {
	size := -int32(le.Uint32(w.buf[off:]))
	return w.buf[off+4 : off+uint32(size)]
}

func (w *writer) allocBytes(data []byte) uint32 {
	off := w.alloc(len(data))
	copy(w.cellData(off), data)
	return off
}

func (w *writer) writeKey(k *Key, parentOff uint32, sd []byte, depth int) (uint32, error) {
	if depth > MaxDepth {
		return 0, fmt.Errorf("key %q: keys nested deeper than %d", k.Path(), MaxDepth)
	}
	if k.Security != nil {
		sd = k.Security
	}
	name, compressed := encodeName(k.name)
	if len(name) > 0xFFFF {
		return 0, fmt.Errorf("key %q: name too long", k.Path())
	}
	off := w.alloc(76 + len(name))

	valuesOff := uint32(noCell)
	var maxValueName, maxValueData int
	if len(k.values) > 0 {
		offs := make([]byte, 4*len(k.values))
		for i, v := range k.values {
			vo, err := w.writeValue(v)
			if err != nil {
				return 0, fmt.Errorf("key %q: %w", k.Path(), err)
			}
			le.PutUint32(offs[4*i:], vo)
			maxValueName = max(maxValueName, 2*utf16Len(v.Name))
			maxValueData = max(maxValueData, len(v.Data))
		}
		valuesOff = w.allocBytes(offs)
	}
	classOff := uint32(noCell)
	class := utf16le.Encode(k.Class)
	if len(class) > 0xFFFF {
		return 0, fmt.Errorf("key %q: class name too long", k.Path())
	}
	if len(class) > 0 {
		classOff = w.allocBytes(class)
	}
	skOff := w.security(sd)

	if len(k.subkeys) > leafMax*0xFFFF {
		return 0, fmt.Errorf("key %q: too many subkeys (%d)", k.Path(), len(k.subkeys))
	}
	children := make([]uint32, len(k.subkeys))
	var maxSubName, maxSubClass int
	for i, s := range k.subkeys {
		co, err := w.writeKey(s, off, sd, depth+1)
		if err != nil {
			return 0, err
		}
		children[i] = co
		maxSubName = max(maxSubName, 2*utf16Len(s.name))
		maxSubClass = max(maxSubClass, 2*utf16Len(s.Class))
	}
	listOff := w.writeSubkeyList(k.subkeys, children)

	flags := k.Flags &^ (keyCompName | KeyHiveEntry)
	if compressed {
		flags |= keyCompName
	}
	if parentOff == noCell {
		flags |= KeyHiveEntry
	}
	c := w.cellData(off)
	copy(c, "nk")
	le.PutUint16(c[2:], flags)
	le.PutUint64(c[4:], toFiletime(k.Modified))
	if w.layered {
		bits := byte(k.Layer & 3)
		if k.InheritClass {
			bits |= 0x80
		}
		c[13] = bits
	}
	le.PutUint32(c[16:], parentOff)
	le.PutUint32(c[20:], uint32(len(k.subkeys)))
	le.PutUint32(c[24:], 0) // volatile subkeys are never on disk
	le.PutUint32(c[28:], listOff)
	le.PutUint32(c[32:], noCell)
	le.PutUint32(c[36:], uint32(len(k.values)))
	le.PutUint32(c[40:], valuesOff)
	le.PutUint32(c[44:], skOff)
	le.PutUint32(c[48:], classOff)
	le.PutUint32(c[52:], uint32(maxSubName))
	le.PutUint32(c[56:], uint32(maxSubClass))
	le.PutUint32(c[60:], uint32(maxValueName))
	le.PutUint32(c[64:], uint32(maxValueData))
	le.PutUint16(c[72:], uint16(len(name)))
	le.PutUint16(c[74:], uint16(len(class)))
	copy(c[76:], name)
	return off, nil
}

func (w *writer) writeValue(v *Value) (uint32, error) {
	name, compressed := encodeName(v.Name)
	if len(name) > 0xFFFF {
		return 0, fmt.Errorf("value %q: name too long", v.Name)
	}
	if uint64(len(v.Data)) >= 0x80000000 {
		return 0, fmt.Errorf("value %q: data too large", v.Name)
	}
	off := w.alloc(20 + len(name))
	var flags uint16
	if compressed {
		flags |= 0x1
	}
	size, dataOff := uint32(len(v.Data)), uint32(0)
	var inline []byte
	typ := v.Type
	switch {
	case v.Tombstone:
		flags |= 0x2
		size, dataOff, typ = 0, noCell, RegNone
	case len(v.Data) <= 4:
		size |= 0x80000000
		inline = v.Data
	case len(v.Data) > bigDataSegment:
		dataOff = w.writeBigData(v.Data)
	default:
		dataOff = w.allocBytes(v.Data)
	}
	c := w.cellData(off)
	copy(c, "vk")
	le.PutUint16(c[2:], uint16(len(name)))
	le.PutUint32(c[4:], size)
	le.PutUint32(c[8:], dataOff)
	copy(c[8:12], inline)
	le.PutUint32(c[12:], uint32(typ))
	le.PutUint16(c[16:], flags)
	copy(c[20:], name)
	return off, nil
}

// writeBigData stores data as a db record: a list of segment cells.
func (w *writer) writeBigData(data []byte) uint32 {
	n := (len(data) + bigDataSegment - 1) / bigDataSegment
	segs := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		end := min(len(data), (i+1)*bigDataSegment)
		// Readers (hivex, libregf) take a segment's data to be its cell
		// size less 8, as in Windows' 16352-byte segment cells; keep 4
		// spare bytes so a short last segment is not cut.
		off := w.alloc(end - i*bigDataSegment + 4)
		copy(w.cellData(off), data[i*bigDataSegment:end])
		le.PutUint32(segs[4*i:], off)
	}
	listOff := w.allocBytes(segs)
	off := w.alloc(8)
	c := w.cellData(off)
	copy(c, "db")
	le.PutUint16(c[2:], uint16(n))
	le.PutUint32(c[4:], listOff)
	return off
}

// writeSubkeyList writes lh lists (sorted, hashed) and, for many subkeys,
// an ri list over them.
func (w *writer) writeSubkeyList(keys []*Key, offs []uint32) uint32 {
	if len(keys) == 0 {
		return noCell
	}
	leaf := func(from, to int) uint32 {
		off := w.alloc(4 + 8*(to-from))
		c := w.cellData(off)
		copy(c, "lh")
		le.PutUint16(c[2:], uint16(to-from))
		for i := from; i < to; i++ {
			le.PutUint32(c[4+8*(i-from):], offs[i])
			le.PutUint32(c[8+8*(i-from):], NameHash(keys[i].name))
		}
		return off
	}
	if len(keys) <= leafMax {
		return leaf(0, len(keys))
	}
	var leaves []uint32
	for i := 0; i < len(keys); i += leafMax {
		leaves = append(leaves, leaf(i, min(len(keys), i+leafMax)))
	}
	off := w.alloc(4 + 4*len(leaves))
	c := w.cellData(off)
	copy(c, "ri")
	le.PutUint16(c[2:], uint16(len(leaves)))
	for i, l := range leaves {
		le.PutUint32(c[4+4*i:], l)
	}
	return off
}

// security returns the sk cell for a descriptor, shared by every key with
// the same descriptor and reference-counted.
func (w *writer) security(sd []byte) uint32 {
	if off, ok := w.sk[string(sd)]; ok {
		w.skRefs[off]++
		return off
	}
	off := w.alloc(20 + len(sd))
	c := w.cellData(off)
	copy(c, "sk")
	le.PutUint32(c[16:], uint32(len(sd)))
	copy(c[20:], sd)
	w.sk[string(sd)] = off
	w.skOrder = append(w.skOrder, off)
	w.skRefs[off] = 1
	return off
}

// linkSecurity fills the sk cells' circular doubly linked list and counts.
func (w *writer) linkSecurity() {
	n := len(w.skOrder)
	for i, off := range w.skOrder {
		c := w.cellData(off)
		le.PutUint32(c[4:], w.skOrder[(i+1)%n])
		le.PutUint32(c[8:], w.skOrder[(i+n-1)%n])
		le.PutUint32(c[12:], w.skRefs[off])
	}
}
