package regf

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// FormatError reports malformed hive data at a file offset.
type FormatError struct {
	Offset int64 // file offset (base block included)
	Msg    string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("regf: offset 0x%x: %s", e.Offset, e.Msg)
}

var le = binary.LittleEndian

// parser reads cells out of the hive bins. Every structure is bounds-checked
// against the bin holding it; every cell but security cells may be used once,
// which rules out cycles and shared cells that would multiply work.
type parser struct {
	data    []byte // hive bins: cell offsets are relative to its start
	bins    []binRange
	minor   uint32
	layered bool     // layer bits and tombstones mean something only in delta hives
	claimed []uint64 // bitset over offset/8
	sk      map[uint32][]byte
}

type binRange struct{ start, end uint32 }

func (p *parser) errAt(cellOff uint32, format string, args ...any) error {
	return &FormatError{Offset: int64(cellOff) + baseBlockSize, Msg: fmt.Sprintf(format, args...)}
}

// Parse reads a whole hive file.
func Parse(b []byte) (*Hive, error) {
	if len(b) < baseBlockSize {
		return nil, &FormatError{0, fmt.Sprintf("file is %d bytes, shorter than the 4096-byte base block", len(b))}
	}
	if string(b[:4]) != "regf" {
		return nil, &FormatError{0, fmt.Sprintf("signature %q, want \"regf\"", b[:4])}
	}
	if got, want := le.Uint32(b[508:]), checksum(b); got != want {
		return nil, &FormatError{508, fmt.Sprintf("base block checksum 0x%08x, computed 0x%08x", got, want)}
	}
	major, minor := le.Uint32(b[20:]), le.Uint32(b[24:])
	if major != 1 || minor < 2 || minor > 6 {
		return nil, &FormatError{20, fmt.Sprintf("unsupported format version %d.%d", major, minor)}
	}
	if t := le.Uint32(b[28:]); t != 0 {
		return nil, &FormatError{28, fmt.Sprintf("file type %d is not a primary hive (a log file?)", t)}
	}
	size := le.Uint32(b[40:])
	if size%binAlign != 0 || size == 0 || uint64(size) > uint64(len(b)-baseBlockSize) {
		return nil, &FormatError{40, fmt.Sprintf("hive bins size 0x%x does not fit the %d-byte file", size, len(b))}
	}
	h := &Hive{
		MinorVersion: minor,
		Layered:      minor >= 6 && le.Uint32(b[144:])&flagLayered != 0,
		Dirty:        le.Uint32(b[4:]) != le.Uint32(b[8:]),
		FileName:     fileName(b),
		Modified:     fromFiletime(le.Uint64(b[12:])),
		sequence:     le.Uint32(b[4:]),
	}
	p := &parser{data: b[baseBlockSize : baseBlockSize+int(size)], minor: minor,
		layered: h.Layered, sk: map[uint32][]byte{}}
	p.claimed = make([]uint64, len(p.data)/8/64+1)
	if err := p.readBins(); err != nil {
		return nil, err
	}
	root, err := p.readKey(le.Uint32(b[36:]), 0)
	if err != nil {
		return nil, err
	}
	h.Root = root
	return h, nil
}

// fileName is the NUL-terminated name in the base block.
func fileName(b []byte) string {
	s, _, _ := strings.Cut(utf16le.Decode(b[48:112]), "\x00")
	return s
}

func (p *parser) readBins() error {
	for off := uint32(0); off < uint32(len(p.data)); {
		hdr := p.data[off:]
		if len(hdr) < binHeaderSize || string(hdr[:4]) != "hbin" {
			return p.errAt(off, "hive bin signature %q, want \"hbin\"", hdr[:min(4, len(hdr))])
		}
		if got := le.Uint32(hdr[4:]); got != off {
			return p.errAt(off, "hive bin says it is at 0x%x", got)
		}
		size := le.Uint32(hdr[8:])
		if size == 0 || size%binAlign != 0 || uint64(off)+uint64(size) > uint64(len(p.data)) {
			return p.errAt(off, "hive bin size 0x%x runs past the hive bins", size)
		}
		p.bins = append(p.bins, binRange{off, off + size})
		off += size
	}
	return nil
}

// cell returns an allocated cell's data (without its size field). When
// claim is set the cell must not have been used before.
func (p *parser) cell(off uint32, what string, claim bool) ([]byte, error) {
	if off%8 != 0 {
		return nil, p.errAt(off, "%s cell offset is not 8-byte aligned", what)
	}
	i := sort.Search(len(p.bins), func(i int) bool { return p.bins[i].end > off })
	if i == len(p.bins) || off < p.bins[i].start+binHeaderSize {
		return nil, p.errAt(off, "%s cell offset 0x%x is outside the hive bins' cells", what, off)
	}
	bin := p.bins[i]
	size := int32(le.Uint32(p.data[off:]))
	if size >= 0 {
		return nil, p.errAt(off, "%s cell is not allocated (size %d)", what, size)
	}
	n := uint32(-int64(size))
	if n < 8 || uint64(off)+uint64(n) > uint64(bin.end) {
		return nil, p.errAt(off, "%s cell size %d runs past its hive bin (ends at 0x%x)", what, n, bin.end)
	}
	if claim {
		w, bit := off/8/64, uint64(1)<<(off/8%64)
		if p.claimed[w]&bit != 0 {
			return nil, p.errAt(off, "%s cell is referenced twice (a cycle or shared cell)", what)
		}
		p.claimed[w] |= bit
	}
	return p.data[off+4 : off+n], nil
}

func (p *parser) readKey(off uint32, depth int) (*Key, error) {
	if depth > MaxDepth {
		return nil, p.errAt(off, "keys nested deeper than %d", MaxDepth)
	}
	c, err := p.cell(off, "key node", true)
	if err != nil {
		return nil, err
	}
	if len(c) < 76 || string(c[:2]) != "nk" {
		return nil, p.errAt(off, "not a key node (signature %q, %d bytes)", c[:min(2, len(c))], len(c))
	}
	flags := le.Uint16(c[2:])
	nameLen := int(le.Uint16(c[72:]))
	if 76+nameLen > len(c) {
		return nil, p.errAt(off, "key name length %d runs past the cell", nameLen)
	}
	k := &Key{
		name:     decodeName(c[76:76+nameLen], flags&keyCompName != 0),
		Modified: fromFiletime(le.Uint64(c[4:])),
		Flags:    flags &^ keyCompName,
	}
	if p.layered {
		k.Layer, k.InheritClass = LayerSemantics(c[13]&3), c[13]&0x80 != 0
	}
	if sk := le.Uint32(c[44:]); sk != noCell {
		if k.Security, err = p.readSecurity(sk); err != nil {
			return nil, err
		}
	}
	if classLen, classOff := le.Uint16(c[74:]), le.Uint32(c[48:]); classLen > 0 && classOff != noCell {
		cd, err := p.cell(classOff, "class name", true)
		if err != nil {
			return nil, err
		}
		if int(classLen) > len(cd) {
			return nil, p.errAt(classOff, "class name length %d runs past the cell", classLen)
		}
		k.Class = utf16le.Decode(cd[:classLen])
	}
	if n := le.Uint32(c[36:]); n > 0 {
		if k.values, err = p.readValues(le.Uint32(c[40:]), n); err != nil {
			return nil, err
		}
	}
	if n := le.Uint32(c[20:]); n > 0 {
		offs, err := p.readSubkeyList(le.Uint32(c[28:]), true)
		if err != nil {
			return nil, err
		}
		k.subkeys = make([]*Key, 0, len(offs))
		for _, so := range offs {
			sub, err := p.readKey(so, depth+1)
			if err != nil {
				return nil, err
			}
			sub.parent = k
			k.subkeys = append(k.subkeys, sub)
		}
		if err := sortSubkeys(k); err != nil {
			return nil, p.errAt(off, "%v", err)
		}
	}
	return k, nil
}

// readSubkeyList returns the key node offsets of an lf, lh, li or ri list.
func (p *parser) readSubkeyList(off uint32, allowIndex bool) ([]uint32, error) {
	c, err := p.cell(off, "subkey list", true)
	if err != nil {
		return nil, err
	}
	if len(c) < 4 {
		return nil, p.errAt(off, "subkey list cell too small")
	}
	sig, n := string(c[:2]), int(le.Uint16(c[2:]))
	entry := 4
	switch sig {
	case "lf", "lh":
		entry = 8
	case "li":
	case "ri":
		if !allowIndex {
			return nil, p.errAt(off, "index root (ri) nested inside an index root")
		}
	default:
		return nil, p.errAt(off, "subkey list signature %q, want lf, lh, li or ri", sig)
	}
	if 4+n*entry > len(c) {
		return nil, p.errAt(off, "subkey list of %d entries runs past the cell", n)
	}
	var out []uint32
	for i := 0; i < n; i++ {
		o := le.Uint32(c[4+i*entry:])
		if sig != "ri" {
			out = append(out, o)
			continue
		}
		sub, err := p.readSubkeyList(o, false)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

func (p *parser) readValues(off uint32, n uint32) ([]*Value, error) {
	c, err := p.cell(off, "value list", true)
	if err != nil {
		return nil, err
	}
	if uint64(n)*4 > uint64(len(c)) {
		return nil, p.errAt(off, "value list of %d entries runs past the cell", n)
	}
	vals := make([]*Value, n)
	for i := range vals {
		if vals[i], err = p.readValue(le.Uint32(c[4*i:])); err != nil {
			return nil, err
		}
	}
	return vals, nil
}

func (p *parser) readValue(off uint32) (*Value, error) {
	c, err := p.cell(off, "value", true)
	if err != nil {
		return nil, err
	}
	if len(c) < 20 || string(c[:2]) != "vk" {
		return nil, p.errAt(off, "not a value record (signature %q, %d bytes)", c[:min(2, len(c))], len(c))
	}
	nameLen := int(le.Uint16(c[2:]))
	if 20+nameLen > len(c) {
		return nil, p.errAt(off, "value name length %d runs past the cell", nameLen)
	}
	flags := le.Uint16(c[16:])
	v := &Value{
		Name:      decodeName(c[20:20+nameLen], flags&0x1 != 0),
		Type:      ValueType(le.Uint32(c[12:])),
		Tombstone: p.layered && flags&0x2 != 0,
	}
	size, dataOff := le.Uint32(c[4:]), le.Uint32(c[8:])
	switch {
	case v.Tombstone: // a deleted value has no data
		v.Type = RegNone
	case size&0x80000000 != 0: // data lives in the offset field
		n := size &^ 0x80000000
		if n > 4 {
			return nil, p.errAt(off, "inline value data of %d bytes (at most 4 fit)", n)
		}
		v.Data = append([]byte{}, c[8:8+n]...)
	case size == 0:
	default:
		if v.Data, err = p.readData(dataOff, size); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func (p *parser) readData(off, size uint32) ([]byte, error) {
	c, err := p.cell(off, "value data", true)
	if err != nil {
		return nil, err
	}
	if size > bigDataSegment && p.minor >= 4 && len(c) >= 8 && string(c[:2]) == "db" {
		return p.readBigData(off, c, size)
	}
	if uint64(size) > uint64(len(c)) {
		return nil, p.errAt(off, "value data of %d bytes runs past its %d-byte cell", size, len(c))
	}
	return append([]byte{}, c[:size]...), nil
}

func (p *parser) readBigData(off uint32, c []byte, size uint32) ([]byte, error) {
	n := uint32(le.Uint16(c[2:]))
	if uint64(n)*bigDataSegment < uint64(size) {
		return nil, p.errAt(off, "big data of %d bytes in only %d segments", size, n)
	}
	list, err := p.cell(le.Uint32(c[4:]), "big data segment list", true)
	if err != nil {
		return nil, err
	}
	if uint64(n)*4 > uint64(len(list)) {
		return nil, p.errAt(le.Uint32(c[4:]), "big data segment list of %d entries runs past the cell", n)
	}
	if uint64(size) > uint64(len(p.data)) {
		return nil, p.errAt(off, "big data of %d bytes is larger than the hive", size)
	}
	out := make([]byte, 0, size)
	for i := uint32(0); i < n && uint32(len(out)) < size; i++ {
		segOff := le.Uint32(list[4*i:])
		seg, err := p.cell(segOff, "big data segment", true)
		if err != nil {
			return nil, err
		}
		want := min(size-uint32(len(out)), bigDataSegment)
		if uint32(len(seg)) < want {
			return nil, p.errAt(segOff, "big data segment of %d bytes, want %d", len(seg), want)
		}
		out = append(out, seg[:want]...)
	}
	return out, nil
}

func (p *parser) readSecurity(off uint32) ([]byte, error) {
	if sd, ok := p.sk[off]; ok {
		return sd, nil
	}
	c, err := p.cell(off, "security", false)
	if err != nil {
		return nil, err
	}
	if len(c) < 20 || string(c[:2]) != "sk" {
		return nil, p.errAt(off, "not a security record (signature %q)", c[:min(2, len(c))])
	}
	n := le.Uint32(c[16:])
	if uint64(n) > uint64(len(c)-20) {
		return nil, p.errAt(off, "security descriptor of %d bytes runs past the cell", n)
	}
	sd := append([]byte{}, c[20:20+n]...)
	p.sk[off] = sd
	return sd, nil
}

// sortSubkeys keeps Key's invariant: subkeys in Windows order, no two with
// the same name. Lists written by Windows are sorted already; li lists
// need not be.
func sortSubkeys(k *Key) error {
	type entry struct {
		folded []uint16
		key    *Key
	}
	es := make([]entry, len(k.subkeys))
	for i, s := range k.subkeys {
		es[i] = entry{foldName(s.name), s}
	}
	slices.SortStableFunc(es, func(a, b entry) int { return slices.Compare(a.folded, b.folded) })
	for i, e := range es {
		if i > 0 && slices.Equal(es[i-1].folded, e.folded) {
			return fmt.Errorf("key %q has two subkeys named %q", k.name, e.key.name)
		}
		k.subkeys[i] = e.key
	}
	return nil
}
