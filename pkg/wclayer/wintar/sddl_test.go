package wintar

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// unhex decodes hex written with spaces and line breaks for reading.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// SIDs used in the hand-assembled descriptors below (MS-DTYP 2.4.2).
const (
	sidBA = "01 02 000000000005 20000000 20020000" // S-1-5-32-544
	sidBU = "01 02 000000000005 20000000 21020000" // S-1-5-32-545
	sidSY = "01 01 000000000005 12000000"          // S-1-5-18
	sidWD = "01 01 000000000001 00000000"          // S-1-1-0
	sidCO = "01 01 000000000003 00000000"          // S-1-3-0
)

// TestSDDLToSecurityDescriptor compares conversions with descriptors
// assembled by hand from MS-DTYP: header (revision, control, four offsets),
// then owner, group, SACL, DACL.
func TestSDDLToSecurityDescriptor(t *testing.T) {
	for _, tc := range []struct{ sddl, want string }{
		{ // the default descriptor of a file Windows creates
			"O:BAG:SYD:(A;;FA;;;BA)(A;;FA;;;SY)(A;;0x1200a9;;;BU)",
			"01 00 0480 14000000 24000000 00000000 30000000" + sidBA + sidSY +
				"02 00 4c00 0300 0000" +
				"00 00 1800 ff011f00" + sidBA +
				"00 00 1400 ff011f00" + sidSY +
				"00 00 1800 a9001200" + sidBU,
		},
		{ // protected, auto-inherited, inheritance flags, generic right
			"O:SYG:SYD:PAI(A;OICI;FA;;;SY)(A;OICIIO;GA;;;CO)",
			"01 00 0494 14000000 20000000 00000000 2c000000" + sidSY + sidSY +
				"02 00 3000 0200 0000" +
				"00 03 1400 ff011f00" + sidSY +
				"00 0b 1400 00000010" + sidCO,
		},
		{ // a SACL with audit flags, a deny ACE, a named-rights mask
			"O:BAG:BAD:(D;;FW;;;WD)S:AI(AU;SAFA;FA;;;WD)",
			"01 00 1488 14000000 24000000 34000000 50000000" + sidBA + sidBA +
				"02 00 1c00 0100 0000" + "02 c0 1400 ff011f00" + sidWD +
				"02 00 1c00 0100 0000" + "01 00 1400 16011200" + sidWD,
		},
		{ // owner and group only, as layers built on Linux carry
			"O:BUG:BU",
			"01 00 0080 14000000 24000000 00000000 00000000" + sidBU + sidBU,
		},
		{ // a null DACL: present, no offset
			"D:NO_ACCESS_CONTROL",
			"01 00 0480 00000000 00000000 00000000 00000000",
		},
		{ // an empty DACL: present, no ACEs
			"D:",
			"01 00 0480 00000000 00000000 00000000 14000000" + "02 00 0800 0000 0000",
		},
		{ // SID strings, a decimal mask, concatenated rights
			"O:S-1-5-21-1-2-3-500G:S-1-5-32-544D:(A;;2032127;;;S-1-5-18)(A;;RCSDWDWO;;;S-1-1-0)",
			"01 00 0480 14000000 30000000 00000000 40000000" +
				"01 05 000000000005 15000000 01000000 02000000 03000000 f4010000" + sidBA +
				"02 00 3000 0200 0000" + "00 00 1400 ff011f00" + sidSY + "00 00 1400 00000f00" + sidWD,
		},
		{ // a mandatory label in the SACL
			"S:(ML;;NWNR;;;LW)",
			"01 00 1080 00000000 00000000 14000000 00000000" +
				"02 00 1c00 0100 0000" + "11 00 1400 03000000" + "01 01 000000000010 00100000",
		},
	} {
		got, err := SDDLToSecurityDescriptor(tc.sddl)
		if err != nil {
			t.Errorf("%s: %v", tc.sddl, err)
			continue
		}
		if want := unhex(t, tc.want); string(got) != string(want) {
			t.Errorf("%s:\n got %x\nwant %x", tc.sddl, got, want)
		}
		if err := CheckSecurityDescriptor(got); err != nil {
			t.Errorf("%s: our own descriptor fails the check: %v", tc.sddl, err)
		}
	}
}

// TestPublishedSDs: descriptors that tools building Windows layers on Linux
// embed as base64 constants (ko, go-containerregistry; .NET's
// RawSecurityDescriptor.GetBinaryForm made them), with the SDDL they name.
func TestPublishedSDs(t *testing.T) {
	for sddl, b64 := range map[string]string{
		"O:BUG:BU": "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA==",
		"O:BAG:BA": "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAgAgAAAQIAAAAAAAUgAAAAIAIAAA==",
	} {
		want, _ := base64.StdEncoding.DecodeString(b64)
		got, err := SDDLToSecurityDescriptor(sddl)
		if err != nil || string(got) != string(want) {
			t.Errorf("%s: got %x, %v; want %x", sddl, got, err, want)
		}
	}
}

func TestSDDLRefused(t *testing.T) {
	for _, tc := range []struct{ sddl, token string }{
		{"O:DA", "DA"}, // domain-relative
		{"O:BAG:BAD:(OA;;RP;bf967a86-0de6-11d0-a285-00aa003049e2;;WD)", "OA"},
		{"D:(A;;FA;;;BA;(x))", "(A;;FA;;;BA;(x)"},
		{"D:(A;;QQ;;;BA)", "QQ"},
		{"D:(A;XX;FA;;;BA)", "XX"},
		{"D:(AU;SA;FA;;;WD)", "AU"},
		{"S:(A;;FA;;;WD)", "A"},
		{"D:(A;;FA;1234;;WD)", "1234;"},
		{"X:BA", "X:BA"},
		{"O:BAO:SY", "O:"},
		{"O:S-1-5-abc", "S-1-5-abc"},
		{"D:(A;;FA;;;BA", "(A;;FA;;;BA"},
		{"D:Q(A;;FA;;;BA)", "Q"},
		{"D:(A;;0x1FFFFFFFF;;;BA)", "0x1FFFFFFFF"},
		{"D:NO_ACCESS_CONTROL(A;;FA;;;BA)", "NO_ACCESS_CONTROL(A;;FA;;;BA)"},
	} {
		_, err := SDDLToSecurityDescriptor(tc.sddl)
		var se *SDDLError
		if !errors.As(err, &se) || se.Token != tc.token || !strings.Contains(err.Error(), tc.sddl) {
			t.Errorf("%s: got %v, want an SDDLError naming token %q", tc.sddl, err, tc.token)
		}
	}
}

func TestCheckSecurityDescriptor(t *testing.T) {
	good, _ := SDDLToSecurityDescriptor("O:BAG:SYD:(A;;FA;;;BA)")
	for name, mutate := range map[string]func(b []byte) []byte{
		"short":             func(b []byte) []byte { return b[:12] },
		"revision":          func(b []byte) []byte { b[0] = 2; return b },
		"absolute":          func(b []byte) []byte { b[3] &^= 0x80; return b },
		"owner offset":      func(b []byte) []byte { b[4] = 0xff; return b },
		"DACL cut":          func(b []byte) []byte { return b[:len(b)-4] },
		"DACL without flag": func(b []byte) []byte { b[2] &^= 0x04; return b },
		"ACE size":          func(b []byte) []byte { b[len(b)-16-8+2] = 3; return b },
	} {
		b := mutate(append([]byte(nil), good...))
		if err := CheckSecurityDescriptor(b); err == nil {
			t.Errorf("%s: accepted %x", name, b)
		}
	}
	if err := CheckSecurityDescriptor(good); err != nil {
		t.Fatal(err)
	}
}
