// Package utf16le converts between Go strings and UTF-16LE bytes, the
// string encoding of Windows on-disk formats (VHDX metadata, registry hives).
package utf16le

import (
	"encoding/binary"
	"unicode/utf16"
)

// Encode returns s as UTF-16LE, without a terminator.
func Encode(s string) []byte {
	units := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(units))
	for i, u := range units {
		binary.LittleEndian.PutUint16(b[2*i:], u)
	}
	return b
}

// Decode decodes UTF-16LE; a trailing odd byte is ignored.
func Decode(b []byte) string {
	units := make([]uint16, len(b)/2)
	for i := range units {
		units[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(units))
}
