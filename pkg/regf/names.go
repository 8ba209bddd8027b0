package regf

import (
	"slices"
	"unicode"
	"unicode/utf16"

	"github.com/layervisor/layervisor/internal/utf16le"
	"github.com/layervisor/layervisor/pkg/regf/internal/latin1"
)

// Registry names compare case-insensitively: Windows upper-cases each UTF-16
// code unit and compares the results as numbers. Subkey lists must be sorted
// in that order, and lh lists carry a hash of the upper-cased name.

func upcaseUnit(u uint16) uint16 {
	if utf16.IsSurrogate(rune(u)) {
		return u
	}
	r := unicode.ToUpper(rune(u))
	if r > 0xFFFF {
		return u
	}
	return uint16(r)
}

// foldName is a name upper-cased the Windows way, as UTF-16 code units.
func foldName(name string) []uint16 {
	units := utf16.Encode([]rune(name))
	for i, u := range units {
		units[i] = upcaseUnit(u)
	}
	return units
}

// compareNames orders two names as Windows orders subkeys.
func compareNames(a, b string) int {
	return slices.Compare(foldName(a), foldName(b))
}

// EqualNames reports whether two key or value names are the same name.
func EqualNames(a, b string) bool {
	if a == b {
		return true
	}
	return compareNames(a, b) == 0
}

// NameHash is the hash an lh subkey list stores for a name.
func NameHash(name string) uint32 {
	var h uint32
	for _, u := range foldName(name) {
		h = h*37 + uint32(u)
	}
	return h
}

// encodeName returns a name's on-disk bytes and whether they are the
// compressed (Latin-1) form, which Windows uses when every character fits.
func encodeName(name string) ([]byte, bool) {
	latin := true
	for _, r := range name {
		if r > 0xFF {
			latin = false
			break
		}
	}
	if latin {
		out := make([]byte, 0, len(name))
		for _, r := range name {
			out = append(out, byte(r))
		}
		return out, true
	}
	return utf16le.Encode(name), false
}

func decodeName(b []byte, compressed bool) string {
	if compressed {
		return latin1.Decode(b)
	}
	return utf16le.Decode(b)
}

// utf16Len is the number of UTF-16 code units of s.
func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r) // ranging a string yields only valid runes
	}
	return n
}
