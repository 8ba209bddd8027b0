package wintar

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Limits of an NTFS extended attribute.
const (
	maxEANameLen  = 254    // bytes, without the NUL
	maxEAValueLen = 0xFFFF // bytes
)

// EA is one extended attribute. A layer tar does not keep EA flags, so
// Flags is 0 for every EA read from a tar.
type EA struct {
	Name  string
	Value []byte
	Flags uint8
}

func checkEA(e EA) error {
	if e.Name == "" || len(e.Name) > maxEANameLen {
		return fmt.Errorf("EA name %q: must be 1 to %d bytes", e.Name, maxEANameLen)
	}
	for i := 0; i < len(e.Name); i++ {
		// '=' would end the PAX key "MSWINDOWS.xattr.<name>".
		if c := e.Name[i]; c < 0x20 || c >= 0x7F || c == '=' {
			return fmt.Errorf("EA name %q: byte %q is not allowed", e.Name, c)
		}
	}
	if len(e.Value) > maxEAValueLen {
		return fmt.Errorf("EA %q: value of %d bytes, at most %d", e.Name, len(e.Value), maxEAValueLen)
	}
	return nil
}

// EncodeEAs builds the FILE_FULL_EA_INFORMATION chain Windows takes (the
// EaData backup stream, CimFS EA blobs): per EA u32 NextEntryOffset, u8
// Flags, u8 NameLength, u16 ValueLength, name, NUL, value, padded to 4
// bytes; the last entry's NextEntryOffset is 0.
func EncodeEAs(eas []EA) ([]byte, error) {
	var b []byte
	last := 0
	for i, e := range eas {
		if err := checkEA(e); err != nil {
			return nil, err
		}
		start := len(b)
		if i > 0 {
			binary.LittleEndian.PutUint32(b[last:], uint32(start-last))
		}
		last = start
		b = append(b, 0, 0, 0, 0, e.Flags, byte(len(e.Name)), 0, 0)
		binary.LittleEndian.PutUint16(b[start+6:], uint16(len(e.Value)))
		b = append(b, e.Name...)
		b = append(b, 0)
		b = append(b, e.Value...)
		if i < len(eas)-1 {
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
		}
	}
	return b, nil
}

// DecodeEAs reads a FILE_FULL_EA_INFORMATION chain.
func DecodeEAs(b []byte) ([]EA, error) {
	var eas []EA
	for off := 0; off < len(b); {
		if len(b)-off < 8 {
			return nil, errors.New("EA entry header truncated")
		}
		next := int(binary.LittleEndian.Uint32(b[off:]))
		nl, vl := int(b[off+5]), int(binary.LittleEndian.Uint16(b[off+6:]))
		end := off + 8 + nl + 1 + vl
		if end > len(b) || b[off+8+nl] != 0 {
			return nil, fmt.Errorf("EA entry at %d overruns the %d-byte buffer", off, len(b))
		}
		e := EA{Name: string(b[off+8 : off+8+nl]), Value: append([]byte(nil), b[off+9+nl:end]...), Flags: b[off+4]}
		if err := checkEA(e); err != nil {
			return nil, err
		}
		eas = append(eas, e)
		if next == 0 {
			break
		}
		if next < end-off || next%4 != 0 {
			return nil, fmt.Errorf("EA entry at %d: bad next offset %d", off, next)
		}
		off += next
	}
	return eas, nil
}
