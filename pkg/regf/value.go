package regf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// ValueType is a registry value's data type (REG_*).
type ValueType uint32

// The value types Windows defines.
const (
	RegNone                     ValueType = 0
	RegSZ                       ValueType = 1
	RegExpandSZ                 ValueType = 2
	RegBinary                   ValueType = 3
	RegDWord                    ValueType = 4
	RegDWordBigEndian           ValueType = 5
	RegLink                     ValueType = 6
	RegMultiSZ                  ValueType = 7
	RegResourceList             ValueType = 8
	RegFullResourceDescriptor   ValueType = 9
	RegResourceRequirementsList ValueType = 10
	RegQWord                    ValueType = 11
)

var typeNames = []string{
	"REG_NONE", "REG_SZ", "REG_EXPAND_SZ", "REG_BINARY", "REG_DWORD",
	"REG_DWORD_BIG_ENDIAN", "REG_LINK", "REG_MULTI_SZ", "REG_RESOURCE_LIST",
	"REG_FULL_RESOURCE_DESCRIPTOR", "REG_RESOURCE_REQUIREMENTS_LIST", "REG_QWORD",
}

func (t ValueType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("REG_0x%x", uint32(t))
}

// ParseValueType accepts a REG_* name (the REG_ prefix and case are optional)
// or a number such as 0x20001.
func ParseValueType(s string) (ValueType, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(u, "REG_") {
		u = "REG_" + u
	}
	if i := slices.Index(typeNames, u); i >= 0 {
		return ValueType(i), nil
	}
	if u == "REG_DWORD_LITTLE_ENDIAN" {
		return RegDWord, nil
	}
	if u == "REG_QWORD_LITTLE_ENDIAN" {
		return RegQWord, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(u, "REG_"), 0, 32)
	if err != nil {
		return 0, fmt.Errorf("unknown value type %q", s)
	}
	return ValueType(n), nil
}

// Value is a named, typed piece of data under a key. In a delta hive a
// Tombstone value records that the value is deleted by this layer.
type Value struct {
	Name      string // "" is the key's default value
	Type      ValueType
	Data      []byte
	Tombstone bool
}

// Clone returns a deep copy.
func (v *Value) Clone() *Value {
	c := *v
	c.Data = bytes.Clone(v.Data)
	return &c
}

// Equal reports whether two values have the same name, type, data and
// tombstone flag.
func (v *Value) Equal(o *Value) bool {
	return v.Name == o.Name && v.Type == o.Type && v.Tombstone == o.Tombstone &&
		string(v.Data) == string(o.Data)
}

// StringData encodes s as REG_SZ data: UTF-16LE with a terminating NUL.
func StringData(s string) []byte { return append(utf16le.Encode(s), 0, 0) }

// MultiStringData encodes REG_MULTI_SZ data: each string NUL-terminated,
// then one more NUL.
func MultiStringData(ss []string) []byte {
	var out []byte
	for _, s := range ss {
		out = append(out, StringData(s)...)
	}
	return append(out, 0, 0)
}

// DWordData encodes a little-endian REG_DWORD.
func DWordData(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

// QWordData encodes a little-endian REG_QWORD.
func QWordData(n uint64) []byte { return binary.LittleEndian.AppendUint64(nil, n) }

// Text decodes REG_SZ, REG_EXPAND_SZ and REG_LINK data, dropping the
// terminating NUL (and anything after it, as Windows does).
func (v *Value) Text() (string, error) {
	switch v.Type {
	case RegSZ, RegExpandSZ, RegLink:
	default:
		return "", fmt.Errorf("value %q is %s, not a string", v.Name, v.Type)
	}
	s, _, _ := strings.Cut(utf16le.Decode(v.Data), "\x00")
	return s, nil
}

// Strings decodes REG_MULTI_SZ data.
func (v *Value) Strings() ([]string, error) {
	if v.Type != RegMultiSZ {
		return nil, fmt.Errorf("value %q is %s, not REG_MULTI_SZ", v.Name, v.Type)
	}
	var out []string
	for s := range strings.SplitSeq(utf16le.Decode(v.Data), "\x00") {
		if s == "" {
			break // the empty string that ends the list
		}
		out = append(out, s)
	}
	return out, nil
}

// Uint decodes REG_DWORD, REG_DWORD_BIG_ENDIAN and REG_QWORD data.
func (v *Value) Uint() (uint64, error) {
	switch {
	case v.Type == RegDWord && len(v.Data) == 4:
		return uint64(binary.LittleEndian.Uint32(v.Data)), nil
	case v.Type == RegDWordBigEndian && len(v.Data) == 4:
		return uint64(binary.BigEndian.Uint32(v.Data)), nil
	case v.Type == RegQWord && len(v.Data) == 8:
		return binary.LittleEndian.Uint64(v.Data), nil
	}
	return 0, fmt.Errorf("value %q is %s with %d bytes, not a number", v.Name, v.Type, len(v.Data))
}

// Decoded is the data in its obvious Go form: a string (Text), a non-nil
// []string (Strings) or a uint64 (Uint); nil when the type has no such
// decoding or the data does not fit it.
func (v *Value) Decoded() any {
	switch v.Type {
	case RegSZ, RegExpandSZ, RegLink:
		s, _ := v.Text()
		return s
	case RegMultiSZ:
		ss, _ := v.Strings()
		if ss == nil {
			ss = []string{}
		}
		return ss
	case RegDWord, RegDWordBigEndian, RegQWord:
		if n, err := v.Uint(); err == nil {
			return n
		}
	}
	return nil
}

// Format renders the data for people: numbers in decimal and hex, strings
// quoted, anything else (or malformed) as hex bytes.
func (v *Value) Format() string {
	if v.Tombstone {
		return "(deleted)"
	}
	switch d := v.Decoded().(type) {
	case string:
		return strconv.Quote(d)
	case []string:
		q := make([]string, len(d))
		for i, s := range d {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case uint64:
		return fmt.Sprintf("%d (0x%x)", d, d)
	}
	return fmt.Sprintf("hex:%x", v.Data)
}
