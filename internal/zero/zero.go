// Package zero tells whether a buffer is all zeros, eight bytes at a time:
// disk writers use it to leave zero blocks unallocated.
package zero

import "encoding/binary"

// Is reports whether every byte of p is zero.
func Is(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}
