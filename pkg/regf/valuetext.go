package regf

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// ParseValueData encodes value data of type t written as words, the way
// a command line gives it:
//
//	REG_SZ, REG_EXPAND_SZ, REG_LINK   one word, the string
//	REG_MULTI_SZ                      one word per string (none for an empty list)
//	REG_DWORD, REG_DWORD_BIG_ENDIAN,
//	REG_QWORD                         one word, a number: decimal or 0x-prefixed hex
//	anything else                     hex bytes, "de,ad,be,ef" or "deadbeef",
//	                                  split across words or not
//
// Strings may not contain NUL, which would end them early, and a
// multi-string may not hold an empty string, which would end the list.
func ParseValueData(t ValueType, words []string) ([]byte, error) {
	one := func() (string, error) {
		if len(words) != 1 {
			return "", fmt.Errorf("%s takes exactly one DATA argument, got %d", t, len(words))
		}
		return words[0], nil
	}
	switch t {
	case RegSZ, RegExpandSZ, RegLink:
		s, err := one()
		if err != nil {
			return nil, err
		}
		if strings.ContainsRune(s, 0) {
			return nil, fmt.Errorf("%s data %q contains a NUL character", t, s)
		}
		return StringData(s), nil
	case RegMultiSZ:
		for i, s := range words {
			if s == "" || strings.ContainsRune(s, 0) {
				return nil, fmt.Errorf("%s string %d (%q) is empty or contains a NUL character, which would end the list", t, i+1, s)
			}
		}
		return MultiStringData(words), nil
	case RegDWord, RegDWordBigEndian, RegQWord:
		s, err := one()
		if err != nil {
			return nil, err
		}
		bits := 32
		if t == RegQWord {
			bits = 64
		}
		n, err := strconv.ParseUint(s, 0, bits)
		if err != nil {
			return nil, fmt.Errorf("%s data %q: not a %d-bit number", t, s, bits)
		}
		switch t {
		case RegQWord:
			return QWordData(n), nil
		case RegDWordBigEndian:
			return binary.BigEndian.AppendUint32(nil, uint32(n)), nil
		}
		return DWordData(uint32(n)), nil
	}
	b, err := ParseHexData(strings.Join(words, ""))
	if err != nil {
		return nil, fmt.Errorf("%s %w", t, err)
	}
	return b, nil
}

// ParseHexData decodes hex bytes, separated by commas, spaces or colons or
// not at all ("de,ad,be,ef", "de:ad", "deadbeef"). Empty input is empty data.
func ParseHexData(s string) ([]byte, error) {
	clean := strings.NewReplacer(",", "", " ", "", ":", "").Replace(s)
	b, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("data %q is not hex bytes: %w", s, err)
	}
	return b, nil
}

// PlainText is the data as a script wants it: strings as they are,
// multi-strings one per line, numbers in decimal, anything else (or data
// that does not fit its type) as hex.
func (v *Value) PlainText() string {
	switch d := v.Decoded().(type) {
	case string:
		return d
	case []string:
		return strings.Join(d, "\n")
	case uint64:
		return strconv.FormatUint(d, 10)
	}
	return hex.EncodeToString(v.Data)
}

// DisplayName shows a value name to people: "@" for the default value
// (the empty name, as .reg files write it), else the name quoted.
func DisplayName(name string) string {
	if name == "" {
		return "@"
	}
	return strconv.Quote(name)
}
