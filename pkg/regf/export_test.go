package regf

import "fmt"

// Test-only access for the external tests.
var (
	VerifyLayout = verifyLayout
	Checksum     = checksum
)

// verifyLayout checks a hive file the way a strict reader would, without
// the parser: base block fields, bins tiling the file, cells tiling each
// bin with 8-byte alignment, lh lists sorted with correct hashes, and sk
// cells linked in a ring with reference counts matching their users.
func verifyLayout(b []byte) error {
	if len(b) < 4096 || string(b[:4]) != "regf" {
		return fmt.Errorf("no base block")
	}
	if le.Uint32(b[4:]) != le.Uint32(b[8:]) {
		return fmt.Errorf("sequence numbers differ")
	}
	if le.Uint32(b[508:]) != checksum(b) {
		return fmt.Errorf("bad checksum")
	}
	size := int(le.Uint32(b[40:]))
	if size != len(b)-4096 || size%4096 != 0 {
		return fmt.Errorf("hive bins size %d, file %d", size, len(b))
	}
	data := b[4096:]
	cells := map[uint32][]byte{} // allocated cells' data by offset
	for off := 0; off < size; {
		if string(data[off:off+4]) != "hbin" || int(le.Uint32(data[off+4:])) != off {
			return fmt.Errorf("bin at 0x%x: bad header", off)
		}
		bsize := int(le.Uint32(data[off+8:]))
		if bsize == 0 || bsize%4096 != 0 || off+bsize > size {
			return fmt.Errorf("bin at 0x%x: size %d", off, bsize)
		}
		for c := off + 32; c < off+bsize; {
			if c%8 != 0 {
				return fmt.Errorf("cell 0x%x not aligned", c)
			}
			n := int32(le.Uint32(data[c:]))
			abs := int(n)
			if n < 0 {
				abs = -abs
				cells[uint32(c)] = data[c+4 : c+abs]
			}
			if abs < 8 || abs%8 != 0 || c+abs > off+bsize {
				return fmt.Errorf("cell 0x%x: size %d", c, n)
			}
			c += abs
		}
		off += bsize
	}
	skUsers := map[uint32]uint32{}
	for off, c := range cells {
		switch string(c[:2]) {
		case "nk":
			skUsers[le.Uint32(c[44:])]++
		case "lh":
			n := int(le.Uint16(c[2:]))
			var prev string
			for i := 0; i < n; i++ {
				nk := cells[le.Uint32(c[4+8*i:])]
				if nk == nil || string(nk[:2]) != "nk" {
					return fmt.Errorf("lh 0x%x entry %d: not a key", off, i)
				}
				name := decodeName(nk[76:76+int(le.Uint16(nk[72:]))], le.Uint16(nk[2:])&keyCompName != 0)
				if le.Uint32(c[8+8*i:]) != NameHash(name) {
					return fmt.Errorf("lh 0x%x entry %q: wrong hash", off, name)
				}
				if i > 0 && compareNames(prev, name) >= 0 {
					return fmt.Errorf("lh 0x%x: %q sorts before %q", off, name, prev)
				}
				prev = name
			}
		}
	}
	for off, users := range skUsers {
		c := cells[off]
		if c == nil || string(c[:2]) != "sk" {
			return fmt.Errorf("key security 0x%x is not an sk cell", off)
		}
		if le.Uint32(c[12:]) != users {
			return fmt.Errorf("sk 0x%x: reference count %d, %d users", off, le.Uint32(c[12:]), users)
		}
		next := cells[le.Uint32(c[4:])]
		if next == nil || le.Uint32(next[8:]) != off {
			return fmt.Errorf("sk 0x%x: broken list links", off)
		}
	}
	return nil
}
