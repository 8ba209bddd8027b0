package wintar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Security descriptor control bits (MS-DTYP 2.4.6).
const (
	seDACLPresent        = 0x0004
	seSACLPresent        = 0x0010
	seDACLAutoInheritReq = 0x0100
	seSACLAutoInheritReq = 0x0200
	seDACLAutoInherited  = 0x0400
	seSACLAutoInherited  = 0x0800
	seDACLProtected      = 0x1000
	seSACLProtected      = 0x2000
	seSelfRelative       = 0x8000
)

// sdHeaderLen is the fixed part of a self-relative SECURITY_DESCRIPTOR.
const sdHeaderLen = 20

// CheckSecurityDescriptor checks that b is a well-formed self-relative
// security descriptor: revision 1, the self-relative bit, and owner, group
// and ACLs (where present) inside b and well-formed themselves.
func CheckSecurityDescriptor(b []byte) error {
	if len(b) < sdHeaderLen {
		return fmt.Errorf("security descriptor of %d bytes, shorter than its %d-byte header", len(b), sdHeaderLen)
	}
	if b[0] != 1 {
		return fmt.Errorf("security descriptor revision %d, want 1", b[0])
	}
	ctl := binary.LittleEndian.Uint16(b[2:])
	if ctl&seSelfRelative == 0 {
		return errors.New("security descriptor is not self-relative")
	}
	for i, name := range []string{"owner", "group"} {
		off := binary.LittleEndian.Uint32(b[4+4*i:])
		if off == 0 {
			continue
		}
		if off < sdHeaderLen || uint64(off) >= uint64(len(b)) {
			return fmt.Errorf("security descriptor %s offset %d outside its %d bytes", name, off, len(b))
		}
		if _, err := sidLen(b[off:]); err != nil {
			return fmt.Errorf("security descriptor %s: %w", name, err)
		}
	}
	for i, name := range []string{"SACL", "DACL"} {
		off := binary.LittleEndian.Uint32(b[12+4*i:])
		present := ctl&[]uint16{seSACLPresent, seDACLPresent}[i] != 0
		if off == 0 {
			continue // absent, or present and null
		}
		if !present {
			return fmt.Errorf("security descriptor has a %s offset but no %s-present flag", name, name)
		}
		if off < sdHeaderLen || uint64(off) >= uint64(len(b)) {
			return fmt.Errorf("security descriptor %s offset %d outside its %d bytes", name, off, len(b))
		}
		if err := checkACL(b[off:]); err != nil {
			return fmt.Errorf("security descriptor %s: %w", name, err)
		}
	}
	return nil
}

// sidLen returns the length of the SID at the start of b.
func sidLen(b []byte) (int, error) {
	if len(b) < 8 {
		return 0, errors.New("SID truncated")
	}
	if b[0] != 1 {
		return 0, fmt.Errorf("SID revision %d, want 1", b[0])
	}
	n := 8 + 4*int(b[1])
	if b[1] > 15 || n > len(b) {
		return 0, fmt.Errorf("SID with %d sub-authorities does not fit", b[1])
	}
	return n, nil
}

// checkACL checks the ACL at the start of b: header, size and each ACE's
// size.
func checkACL(b []byte) error {
	if len(b) < 8 {
		return errors.New("ACL truncated")
	}
	if rev := b[0]; rev != 2 && rev != 4 {
		return fmt.Errorf("ACL revision %d, want 2 or 4", rev)
	}
	size := int(binary.LittleEndian.Uint16(b[2:]))
	count := int(binary.LittleEndian.Uint16(b[4:]))
	if size < 8 || size > len(b) {
		return fmt.Errorf("ACL size %d outside the %d bytes left", size, len(b))
	}
	off := 8
	for i := range count {
		if off+4 > size {
			return fmt.Errorf("ACE %d beyond the ACL's %d bytes", i, size)
		}
		n := int(binary.LittleEndian.Uint16(b[off+2:]))
		if n < 4 || n%4 != 0 || off+n > size {
			return fmt.Errorf("ACE %d has a bad size %d", i, n)
		}
		off += n
	}
	return nil
}

// encodeSID turns "S-1-5-32-544" into binary form.
func encodeSID(s string) ([]byte, error) {
	parts := strings.Split(s, "-")
	if len(parts) < 3 || !strings.EqualFold(parts[0], "S") || parts[1] != "1" {
		return nil, fmt.Errorf("SID %q is not S-1-<authority>[-<sub-authority>...]", s)
	}
	auth, err := parseSDDLNumber(parts[2], 48)
	if err != nil {
		return nil, fmt.Errorf("SID %q authority: %w", s, err)
	}
	subs := parts[3:]
	if len(subs) > 15 {
		return nil, fmt.Errorf("SID %q has %d sub-authorities, at most 15 allowed", s, len(subs))
	}
	b := make([]byte, 8+4*len(subs))
	b[0], b[1] = 1, byte(len(subs))
	for i := range 6 { // big-endian 48-bit authority
		b[2+i] = byte(auth >> (8 * (5 - i)))
	}
	for i, p := range subs {
		v, err := parseSDDLNumber(p, 32)
		if err != nil {
			return nil, fmt.Errorf("SID %q sub-authority %d: %w", s, i, err)
		}
		binary.LittleEndian.PutUint32(b[8+4*i:], uint32(v))
	}
	return b, nil
}

// parseSDDLNumber reads a decimal or 0x-hex unsigned number of at most bits.
func parseSDDLNumber(s string, bits int) (uint64, error) {
	base := 10
	if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		s, base = s[2:], 16
	}
	return strconv.ParseUint(s, base, bits)
}
