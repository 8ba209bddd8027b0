package wintar

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// SDDL aliases for well-known SIDs that do not depend on a machine or domain
// (MS-DTYP 2.4.2.4). Domain- and machine-relative aliases (DA, LA, ...) are
// refused: a layer carries no domain to resolve them against.
var sddlSIDs = map[string]string{
	"AC": "S-1-15-2-1", // all application packages
	"AN": "S-1-5-7",    // anonymous
	"AO": "S-1-5-32-548",
	"AU": "S-1-5-11", // authenticated users
	"BA": "S-1-5-32-544",
	"BG": "S-1-5-32-546",
	"BO": "S-1-5-32-551",
	"BU": "S-1-5-32-545",
	"CG": "S-1-3-1", // creator group
	"CO": "S-1-3-0", // creator owner
	"ER": "S-1-5-32-573",
	"HI": "S-1-16-12288", // high integrity
	"IS": "S-1-5-32-568",
	"IU": "S-1-5-4", // interactive
	"LS": "S-1-5-19",
	"LW": "S-1-16-4096", // low integrity
	"ME": "S-1-16-8192", // medium integrity
	"MP": "S-1-16-8448", // medium-plus integrity
	"NO": "S-1-5-32-556",
	"NS": "S-1-5-20",
	"NU": "S-1-5-2", // network
	"OW": "S-1-3-4", // owner rights
	"PO": "S-1-5-32-550",
	"PS": "S-1-5-10", // principal self
	"PU": "S-1-5-32-547",
	"RC": "S-1-5-12", // restricted code
	"RD": "S-1-5-32-555",
	"RE": "S-1-5-32-552",
	"RU": "S-1-5-32-554",
	"SI": "S-1-16-16384", // system integrity
	"SO": "S-1-5-32-549",
	"SU": "S-1-5-6", // service
	"SY": "S-1-5-18",
	"WD": "S-1-1-0", // everyone
	"WR": "S-1-5-33",
}

// ACE types; object and callback ACEs are not supported.
var sddlACETypes = map[string]byte{
	"A":  0x00, // ACCESS_ALLOWED_ACE_TYPE
	"D":  0x01, // ACCESS_DENIED_ACE_TYPE
	"AU": 0x02, // SYSTEM_AUDIT_ACE_TYPE
	"ML": 0x11, // SYSTEM_MANDATORY_LABEL_ACE_TYPE
}

var sddlACEFlags = map[string]byte{
	"OI": 0x01, // object inherit
	"CI": 0x02, // container inherit
	"NP": 0x04, // no propagate inherit
	"IO": 0x08, // inherit only
	"ID": 0x10, // inherited
	"SA": 0x40, // successful access (audit)
	"FA": 0x80, // failed access (audit)
}

var sddlRights = map[string]uint32{
	"GA": 0x10000000, "GR": 0x80000000, "GW": 0x40000000, "GX": 0x20000000,
	"RC": 0x00020000, "SD": 0x00010000, "WD": 0x00040000, "WO": 0x00080000,
	"RP": 0x10, "WP": 0x20, "CC": 0x01, "DC": 0x02, "LC": 0x04, "SW": 0x08,
	"LO": 0x80, "DT": 0x40, "CR": 0x100,
	"FA": 0x001F01FF, "FR": 0x00120089, "FW": 0x00120116, "FX": 0x001200A0,
	"KA": 0x000F003F, "KR": 0x00020019, "KW": 0x00020006, "KX": 0x00020019,
	"NR": 0x02, "NW": 0x01, "NX": 0x04, // mandatory label policy
}

// SDDLError is a part of an SDDL string the converter does not accept.
type SDDLError struct {
	SDDL  string
	Token string
	Why   string
}

func (e *SDDLError) Error() string {
	return fmt.Sprintf("SDDL %q: token %q: %s", e.SDDL, e.Token, e.Why)
}

// SDDLToSecurityDescriptor converts a security descriptor string (SDDL) to a
// self-relative security descriptor, laid out header, owner, group, SACL,
// DACL (the order MS-DTYP draws; any order is valid).
//
// Supported: O:, G:, D: and S: in any order, ACL flags P, AI, AR and
// NO_ACCESS_CONTROL, ACE types A, D, AU and ML, ACE flags OI CI NP IO ID SA
// FA, access masks as numbers (0x hex or decimal) or concatenated two-letter
// rights, SIDs as S-1-... or a machine-independent alias. Anything else
// (object ACEs, conditional ACEs, resource attributes, domain-relative
// aliases) is an *SDDLError naming the token.
func SDDLToSecurityDescriptor(sddl string) ([]byte, error) {
	bad := func(tok, why string) error { return &SDDLError{SDDL: sddl, Token: tok, Why: why} }
	var owner, group, sacl, dacl []byte
	var ctl uint16 = seSelfRelative
	seen := map[byte]bool{}
	s := sddl
	for s != "" {
		if len(s) < 2 || s[1] != ':' || !strings.ContainsRune("OGDS", rune(s[0])) {
			return nil, bad(s, "expected O:, G:, D: or S:")
		}
		c := s[0]
		if seen[c] {
			return nil, bad(s[:2], "given twice")
		}
		seen[c] = true
		end := componentEnd(s[2:]) + 2
		val := s[2:end]
		s = s[end:]
		switch c {
		case 'O', 'G':
			sid, err := sddlSID(val)
			if err != nil {
				return nil, bad(val, err.Error())
			}
			if c == 'O' {
				owner = sid
			} else {
				group = sid
			}
		case 'D', 'S':
			acl, flags, null, err := sddlACL(val, c == 'S', bad)
			if err != nil {
				return nil, err
			}
			if c == 'D' {
				ctl |= seDACLPresent | flags
				if !null {
					dacl = acl
				}
			} else {
				ctl |= seSACLPresent | flags<<1 // SACL bits sit one above the DACL ones
				if !null {
					sacl = acl
				}
			}
		}
	}
	b := make([]byte, sdHeaderLen, sdHeaderLen+len(owner)+len(group)+len(sacl)+len(dacl))
	b[0] = 1
	binary.LittleEndian.PutUint16(b[2:], ctl)
	for i, part := range [][]byte{owner, group, sacl, dacl} {
		if part == nil {
			continue
		}
		binary.LittleEndian.PutUint32(b[4+4*i:], uint32(len(b)))
		b = append(b, part...)
	}
	return b, nil
}

// componentEnd finds where an SDDL component's value ends: at the next
// "X:" outside parentheses.
func componentEnd(s string) int {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ':':
			if depth == 0 && i > 0 && strings.ContainsRune("OGDS", rune(s[i-1])) {
				return i - 1
			}
		}
	}
	return len(s)
}

func sddlSID(tok string) ([]byte, error) {
	if sid, ok := sddlSIDs[strings.ToUpper(tok)]; ok && len(tok) == 2 {
		tok = sid
	} else if len(tok) == 2 {
		return nil, fmt.Errorf("unsupported SID alias")
	}
	return encodeSID(tok)
}

// sddlACL parses "flags(ace)(ace)..." and returns the binary ACL, the
// DACL-position control bits and whether the ACL is null.
func sddlACL(val string, sacl bool, bad func(tok, why string) error) (acl []byte, ctl uint16, null bool, err error) {
	flags, aces, _ := strings.Cut(val, "(")
	if aces != "" || strings.HasSuffix(val, "(") {
		aces = "(" + aces
	}
	for flags != "" {
		switch {
		case strings.HasPrefix(flags, "NO_ACCESS_CONTROL"):
			null, flags = true, flags[len("NO_ACCESS_CONTROL"):]
		case strings.HasPrefix(flags, "AI"):
			ctl, flags = ctl|seDACLAutoInherited, flags[2:]
		case strings.HasPrefix(flags, "AR"):
			ctl, flags = ctl|seDACLAutoInheritReq, flags[2:]
		case strings.HasPrefix(flags, "P"):
			ctl, flags = ctl|seDACLProtected, flags[1:]
		default:
			return nil, 0, false, bad(flags, "unknown ACL flag")
		}
	}
	acl = make([]byte, 8)
	acl[0] = 2 // ACL_REVISION
	count := 0
	for aces != "" {
		if aces[0] != '(' {
			return nil, 0, false, bad(aces, "expected ( starting an ACE")
		}
		end := strings.IndexByte(aces, ')')
		if end < 0 {
			return nil, 0, false, bad(aces, "ACE without closing )")
		}
		ace, err := sddlACE(aces[1:end], sacl, bad)
		if err != nil {
			return nil, 0, false, err
		}
		acl = append(acl, ace...)
		count++
		aces = aces[end+1:]
	}
	if null && count > 0 {
		return nil, 0, false, bad(val, "NO_ACCESS_CONTROL with ACEs")
	}
	if len(acl) > 0xFFFF || count > 0xFFFF {
		return nil, 0, false, bad(val, "ACL larger than 64 KiB")
	}
	binary.LittleEndian.PutUint16(acl[2:], uint16(len(acl)))
	binary.LittleEndian.PutUint16(acl[4:], uint16(count))
	return acl, ctl, null, nil
}

func sddlACE(s string, sacl bool, bad func(tok, why string) error) ([]byte, error) {
	f := strings.Split(s, ";")
	if len(f) != 6 {
		return nil, bad("("+s+")", fmt.Sprintf("ACE has %d fields, want 6 (resource attributes are not supported)", len(f)))
	}
	typ, ok := sddlACETypes[f[0]]
	if !ok {
		return nil, bad(f[0], "unsupported ACE type (supported: A, D, AU, ML)")
	}
	if audit := typ == 0x02 || typ == 0x11; audit != sacl {
		return nil, bad(f[0], "ACE type not allowed in this ACL")
	}
	var flags byte
	for fl := f[1]; fl != ""; fl = fl[2:] {
		if len(fl) < 2 {
			return nil, bad(fl, "unknown ACE flag")
		}
		v, ok := sddlACEFlags[fl[:2]]
		if !ok {
			return nil, bad(fl[:2], "unknown ACE flag")
		}
		flags |= v
	}
	mask, err := sddlMask(f[2], bad)
	if err != nil {
		return nil, err
	}
	if f[3] != "" || f[4] != "" {
		return nil, bad(f[3]+";"+f[4], "object ACE GUIDs are not supported")
	}
	sid, err := sddlSID(f[5])
	if err != nil {
		return nil, bad(f[5], err.Error())
	}
	ace := make([]byte, 8, 8+len(sid))
	ace[0], ace[1] = typ, flags
	binary.LittleEndian.PutUint16(ace[2:], uint16(8+len(sid)))
	binary.LittleEndian.PutUint32(ace[4:], mask)
	return append(ace, sid...), nil
}

func sddlMask(s string, bad func(tok, why string) error) (uint32, error) {
	if s == "" {
		return 0, bad(s, "empty access mask")
	}
	if s[0] >= '0' && s[0] <= '9' {
		v, err := parseSDDLNumber(s, 32)
		if err != nil {
			return 0, bad(s, "access mask is not a 32-bit number")
		}
		return uint32(v), nil
	}
	var m uint32
	for r := s; r != ""; r = r[2:] {
		if len(r) < 2 {
			return 0, bad(r, "unknown access right")
		}
		v, ok := sddlRights[r[:2]]
		if !ok {
			return 0, bad(r[:2], "unknown access right")
		}
		m |= v
	}
	return m, nil
}
