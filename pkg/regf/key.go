package regf

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// LayerSemantics says how a key of a delta (layered) hive combines with the
// same key of the layer below it.
type LayerSemantics uint8

// The four layer semantics, as stored in bits 0–1 of key node byte 13.
const (
	LayerMerge          LayerSemantics = 0 // merge values and subkeys into the base key
	LayerTombstone      LayerSemantics = 1 // delete the base key and its subtree
	LayerSupersedeLocal LayerSemantics = 2 // replace the base key's values and class, merge subkeys
	LayerSupersedeTree  LayerSemantics = 3 // replace the base key's whole subtree
)

func (s LayerSemantics) String() string {
	switch s {
	case LayerMerge:
		return "merge"
	case LayerTombstone:
		return "tombstone"
	case LayerSupersedeLocal:
		return "supersede-local"
	case LayerSupersedeTree:
		return "supersede-tree"
	}
	return fmt.Sprintf("layer(%d)", uint8(s))
}

// Key node flags worth naming.
const (
	KeyVolatile   uint16 = 0x0001
	KeyHiveExit   uint16 = 0x0002
	KeyHiveEntry  uint16 = 0x0004 // the root key
	KeyNoDelete   uint16 = 0x0008
	KeySymLink    uint16 = 0x0010
	keyCompName   uint16 = 0x0020 // name stored as Latin-1; the writer decides
	maxKeyNameLen        = 255    // UTF-16 code units, as Windows limits key names
	maxValueName         = 16383
	// MaxDepth bounds key nesting, as Windows does (512 levels).
	MaxDepth = 512
)

// ErrNotFound is returned (wrapped) when a key or value does not exist.
var ErrNotFound = errors.New("not found")

// Key is a registry key: a node of the hive tree. Subkeys are kept sorted
// the way Windows sorts them; values keep their order.
type Key struct {
	name     string
	parent   *Key
	subkeys  []*Key
	values   []*Value
	Class    string    // class name; "" for none
	Modified time.Time // last write time
	// Security is a self-relative security descriptor. nil means "the same
	// as the parent" when writing.
	Security     []byte
	Flags        uint16 // key node flags (KeyVolatile, KeySymLink, ...)
	Layer        LayerSemantics
	InheritClass bool // delta hives: keep the base key's class
}

// NewKey returns a detached key (see AddSubkey).
func NewKey(name string) (*Key, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	return &Key{name: name, Modified: time.Now().UTC()}, nil
}

func checkKeyName(name string) error {
	switch {
	case name == "":
		return errors.New("empty key name")
	case strings.ContainsRune(name, '\\'):
		return fmt.Errorf("key name %q contains a backslash", name)
	case utf16Len(name) > maxKeyNameLen:
		return fmt.Errorf("key name %q is longer than %d characters", name, maxKeyNameLen)
	}
	return nil
}

// Name is the key's own name (not its path).
func (k *Key) Name() string { return k.name }

// Parent is the key above this one; nil for the root or a detached key.
func (k *Key) Parent() *Key { return k.parent }

// Path is the key's path below the root, components joined by `\`; "" for
// the root.
func (k *Key) Path() string {
	var parts []string
	for c := k; c.parent != nil; c = c.parent {
		parts = append(parts, c.name)
	}
	slices.Reverse(parts)
	return strings.Join(parts, `\`)
}

// Subkeys returns the subkeys in Windows order. Do not modify the slice.
func (k *Key) Subkeys() []*Key { return k.subkeys }

// Values returns the values in stored order. Do not modify the slice.
func (k *Key) Values() []*Value { return k.values }

func (k *Key) subkeyIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(k.subkeys, foldName(name), func(s *Key, f []uint16) int {
		return slices.Compare(foldName(s.name), f)
	})
}

// Subkey returns the direct subkey with this name (case-insensitive), or nil.
func (k *Key) Subkey(name string) *Key {
	if i, ok := k.subkeyIndex(name); ok {
		return k.subkeys[i]
	}
	return nil
}

// CreateSubkey returns the named subkey, creating it if it does not exist.
func (k *Key) CreateSubkey(name string) (*Key, error) {
	i, ok := k.subkeyIndex(name)
	if ok {
		return k.subkeys[i], nil
	}
	c, err := NewKey(name)
	if err != nil {
		return nil, err
	}
	k.insertSubkey(i, c)
	return c, nil
}

// AddSubkey attaches a detached key (and its subtree) under k. It fails if a
// subkey of that name exists.
func (k *Key) AddSubkey(c *Key) error {
	if c.parent != nil {
		return fmt.Errorf("key %q already has a parent", c.name)
	}
	if err := checkKeyName(c.name); err != nil {
		return err
	}
	i, ok := k.subkeyIndex(c.name)
	if ok {
		return fmt.Errorf("key %q already has a subkey %q", k.Path(), c.name)
	}
	k.insertSubkey(i, c)
	return nil
}

func (k *Key) insertSubkey(i int, c *Key) {
	c.parent = k
	k.subkeys = slices.Insert(k.subkeys, i, c)
}

// DeleteSubkey removes the named subkey and its subtree; it reports whether
// the subkey existed.
func (k *Key) DeleteSubkey(name string) bool {
	i, ok := k.subkeyIndex(name)
	if !ok {
		return false
	}
	k.subkeys[i].parent = nil
	k.subkeys = append(k.subkeys[:i], k.subkeys[i+1:]...) // not slices.Delete: callers may be ranging over Subkeys()
	return true
}

func (k *Key) valueIndex(name string) int {
	return slices.IndexFunc(k.values, func(v *Value) bool { return EqualNames(v.Name, name) })
}

// Value returns the named value (case-insensitive), or nil.
func (k *Key) Value(name string) *Value {
	if i := k.valueIndex(name); i >= 0 {
		return k.values[i]
	}
	return nil
}

// SetValue creates or replaces a value. The data is used as is.
func (k *Key) SetValue(name string, typ ValueType, data []byte) error {
	return k.setValue(&Value{Name: name, Type: typ, Data: data})
}

// SetTombstone records, in a delta hive, that this layer deletes the value.
func (k *Key) SetTombstone(name string) error {
	return k.setValue(&Value{Name: name, Tombstone: true})
}

func (k *Key) setValue(nv *Value) error {
	if utf16Len(nv.Name) > maxValueName {
		return fmt.Errorf("value name %q is longer than %d characters", nv.Name, maxValueName)
	}
	if i := k.valueIndex(nv.Name); i >= 0 {
		k.values[i] = nv
	} else {
		k.values = append(k.values, nv)
	}
	return nil
}

// DeleteValue removes the named value; it reports whether it existed.
func (k *Key) DeleteValue(name string) bool {
	i := k.valueIndex(name)
	if i >= 0 {
		k.values = append(k.values[:i], k.values[i+1:]...) // as in DeleteSubkey
	}
	return i >= 0
}

// Clone returns a deep, detached copy of the key and its subtree.
func (k *Key) Clone() *Key {
	c := *k
	c.parent = nil
	c.Security = bytes.Clone(k.Security)
	c.values = make([]*Value, len(k.values))
	for i, v := range k.values {
		c.values[i] = v.Clone()
	}
	c.subkeys = make([]*Key, len(k.subkeys))
	for i, s := range k.subkeys {
		s2 := s.Clone()
		s2.parent = &c
		c.subkeys[i] = s2
	}
	return &c
}

// Walk calls fn for k and every key below it, parents before children.
// Returning an error stops the walk.
func (k *Key) Walk(fn func(*Key) error) error {
	if err := fn(k); err != nil {
		return err
	}
	for _, s := range k.subkeys {
		if err := s.Walk(fn); err != nil {
			return err
		}
	}
	return nil
}

// SplitPath splits a key path on backslashes, ignoring empty components
// (so a leading `\` is allowed).
func SplitPath(path string) []string {
	return strings.FieldsFunc(path, func(r rune) bool { return r == '\\' })
}

// Lookup follows a path (relative to k) and returns the key, or nil.
func (k *Key) Lookup(path string) *Key {
	cur := k
	for _, p := range SplitPath(path) {
		if cur = cur.Subkey(p); cur == nil {
			return nil
		}
	}
	return cur
}

// CreatePath returns the key at path below k, creating missing keys.
func (k *Key) CreatePath(path string) (*Key, error) {
	cur := k
	for _, p := range SplitPath(path) {
		var err error
		if cur, err = cur.CreateSubkey(p); err != nil {
			return nil, err
		}
	}
	return cur, nil
}
