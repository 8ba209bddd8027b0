// Package winguid is the GUID of Windows on-disk formats (VHDX, GPT, CimFS,
// registry values): the first three fields little-endian, the last eight
// bytes in order, printed as lower-case xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
package winguid

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is a GUID in its on-disk form.
type GUID [16]byte

// Parse parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", braces optional, any
// case.
func Parse(s string) (GUID, error) {
	var g GUID
	t := strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	if len(t) != 36 || t[8] != '-' || t[13] != '-' || t[18] != '-' || t[23] != '-' {
		return g, fmt.Errorf("GUID %q: not in 8-4-4-4-12 form", s)
	}
	raw, err := hex.DecodeString(t[0:8] + t[9:13] + t[14:18] + t[19:23] + t[24:36])
	if err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}

// MustParse is Parse for constants; it panics on a malformed GUID.
func MustParse(s string) GUID {
	g, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return g
}

// New returns a random (version 4) GUID.
func New() GUID {
	var g GUID
	if _, err := rand.Read(g[:]); err != nil {
		panic(fmt.Sprintf("winguid: random GUID: %v", err)) // crypto/rand does not fail on supported OSes
	}
	g[7] = g[7]&0x0f | 0x40 // version 4 (Data3's high nibble, little-endian)
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// IsZero reports whether g is all zeros.
func (g GUID) IsZero() bool { return g == GUID{} }

// String formats g as lower-case xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
func (g GUID) String() string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(g[0:]), le.Uint16(g[4:]), le.Uint16(g[6:]), g[8:10], g[10:16])
}

// MarshalText makes GUIDs print as strings in JSON.
func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }
