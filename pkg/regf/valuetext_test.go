package regf_test

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/regf"
)

// Every type from words: the bytes Windows stores, and PlainText gives the
// words back.
func TestParseValueData(t *testing.T) {
	for _, tc := range []struct {
		typ   regf.ValueType
		words []string
		hex   string // the stored bytes
		plain string // PlainText of the value
	}{
		{regf.RegSZ, []string{"Ab"}, "410062000000", "Ab"},
		{regf.RegSZ, []string{""}, "0000", ""},
		{regf.RegSZ, []string{"é€"}, "e900ac200000", "é€"},
		{regf.RegExpandSZ, []string{"%P%"}, "2500500025000000", "%P%"},
		{regf.RegLink, []string{`\R`}, "5c0052000000", `\R`},
		{regf.RegMultiSZ, []string{"a", "b c"}, "610000006200200063000000" + "0000", "a\nb c"},
		{regf.RegMultiSZ, nil, "0000", ""},
		{regf.RegDWord, []string{"42"}, "2a000000", "42"},
		{regf.RegDWord, []string{"0x2a"}, "2a000000", "42"},
		{regf.RegDWord, []string{"4294967295"}, "ffffffff", "4294967295"},
		{regf.RegDWordBigEndian, []string{"0x01020304"}, "01020304", "16909060"},
		{regf.RegQWord, []string{"18446744073709551615"}, "ffffffffffffffff", "18446744073709551615"},
		{regf.RegQWord, []string{"0x0102030405060708"}, "0807060504030201", "72623859790382856"},
		{regf.RegBinary, []string{"de,ad,be,ef"}, "deadbeef", "deadbeef"},
		{regf.RegBinary, []string{"DE:AD", "be ef"}, "deadbeef", "deadbeef"},
		{regf.RegBinary, nil, "", ""},
		{regf.RegNone, []string{"00"}, "00", "00"},
		{regf.RegResourceList, []string{"0102"}, "0102", "0102"},
		{regf.RegFullResourceDescriptor, []string{"03"}, "03", "03"},
		{regf.RegResourceRequirementsList, []string{"04,05"}, "0405", "0405"},
		{regf.ValueType(0x20001), []string{"ff"}, "ff", "ff"},
	} {
		got, err := regf.ParseValueData(tc.typ, tc.words)
		if err != nil {
			t.Errorf("ParseValueData(%s, %q): %v", tc.typ, tc.words, err)
			continue
		}
		if hex.EncodeToString(got) != tc.hex {
			t.Errorf("ParseValueData(%s, %q) = %x, want %s", tc.typ, tc.words, got, tc.hex)
		}
		if p := (&regf.Value{Type: tc.typ, Data: got}).PlainText(); p != tc.plain {
			t.Errorf("PlainText of %s %q = %q, want %q", tc.typ, tc.words, p, tc.plain)
		}
	}
}

// Bad words: the error names the type and the input at fault.
func TestParseValueDataErrors(t *testing.T) {
	for _, tc := range []struct {
		typ   regf.ValueType
		words []string
		want  string
	}{
		{regf.RegSZ, nil, "REG_SZ takes exactly one DATA argument, got 0"},
		{regf.RegExpandSZ, []string{"a", "b"}, "REG_EXPAND_SZ takes exactly one DATA argument, got 2"},
		{regf.RegLink, []string{"a\x00b"}, `REG_LINK data "a\x00b" contains a NUL`},
		{regf.RegMultiSZ, []string{"a", ""}, `REG_MULTI_SZ string 2 ("") is empty`},
		{regf.RegMultiSZ, []string{"a\x00"}, `REG_MULTI_SZ string 1 ("a\x00")`},
		{regf.RegDWord, nil, "REG_DWORD takes exactly one DATA argument, got 0"},
		{regf.RegDWord, []string{"0x100000000"}, `REG_DWORD data "0x100000000": not a 32-bit number`},
		{regf.RegDWord, []string{"-1"}, `REG_DWORD data "-1": not a 32-bit number`},
		{regf.RegDWordBigEndian, []string{"ten"}, `REG_DWORD_BIG_ENDIAN data "ten": not a 32-bit number`},
		{regf.RegQWord, []string{"18446744073709551616"}, `REG_QWORD data "18446744073709551616": not a 64-bit number`},
		{regf.RegQWord, []string{"1", "2"}, "REG_QWORD takes exactly one DATA argument, got 2"},
		{regf.RegBinary, []string{"zz"}, `REG_BINARY data "zz" is not hex bytes`},
		{regf.RegNone, []string{"abc"}, `REG_NONE data "abc" is not hex bytes`},
		{regf.ValueType(0x20001), []string{"0x1"}, `REG_0x20001 data "0x1" is not hex bytes`},
	} {
		got, err := regf.ParseValueData(tc.typ, tc.words)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseValueData(%s, %q) = %x, %v; want an error containing %q", tc.typ, tc.words, got, err, tc.want)
		}
	}
	// The hex decoder's error stays reachable for callers.
	if _, err := regf.ParseValueData(regf.RegBinary, []string{"abc"}); !errors.Is(err, hex.ErrLength) {
		t.Errorf("odd hex digits: %v, want hex.ErrLength wrapped", err)
	}
}

func TestParseHexData(t *testing.T) {
	for in, want := range map[string]string{
		"de,ad,be,ef": "deadbeef", "DE AD": "dead", "de:ad:": "dead", "": "", " , ": "",
	} {
		got, err := regf.ParseHexData(in)
		if err != nil || hex.EncodeToString(got) != want || got == nil {
			t.Errorf("ParseHexData(%q) = %#v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"d", "xy", "de,ad,b"} {
		if _, err := regf.ParseHexData(in); err == nil || !strings.Contains(err.Error(), `"`+in+`" is not hex bytes`) {
			t.Errorf("ParseHexData(%q): %v, want an error naming the input", in, err)
		}
	}
}

// Data that does not fit its type prints as hex, whatever the type says.
func TestPlainTextMalformed(t *testing.T) {
	for _, tc := range []struct {
		v    regf.Value
		want string
	}{
		{regf.Value{Type: regf.RegDWord, Data: []byte{1, 2, 3}}, "010203"},
		{regf.Value{Type: regf.RegQWord, Data: []byte{1, 0, 0, 0}}, "01000000"},
		{regf.Value{Type: regf.RegSZ, Data: []byte{'a', 0, 0, 0, 'b', 0}}, "a"}, // stops at the NUL, as Windows reads it
		{regf.Value{Type: regf.RegMultiSZ, Data: nil}, ""},
		{regf.Value{Type: regf.RegNone, Tombstone: true}, ""},
	} {
		if got := tc.v.PlainText(); got != tc.want {
			t.Errorf("PlainText(%s %x) = %q, want %q", tc.v.Type, tc.v.Data, got, tc.want)
		}
	}
}

func TestDisplayName(t *testing.T) {
	for name, want := range map[string]string{"": "@", "Start": `"Start"`, `a"b\c`: `"a\"b\\c"`, "@": `"@"`} {
		if got := regf.DisplayName(name); got != want {
			t.Errorf("DisplayName(%q) = %s, want %s", name, got, want)
		}
	}
}
