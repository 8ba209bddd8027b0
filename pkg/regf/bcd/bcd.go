// Package bcd reads and edits a Boot Configuration Data store, which is a
// registry hive: Objects\{guid}\Description holds the object type and
// Objects\{guid}\Elements\<type as 8 hex digits> holds each element's value
// in "Element".
//
// Only public element types and encodings are supported: strings, booleans,
// integers, object references and lists. Device elements are binary
// structures whose layout (in particular for cimfs and composite devices)
// is not public; they can be read as raw bytes, and writing them, or
// configuring CIM boot, fails with ErrNotPublic.
package bcd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/layervisor/layervisor/pkg/regf"
)

// ErrNotPublic reports an element whose type number or encoding is not
// publicly documented.
var ErrNotPublic = errors.New("bcd: element type or encoding not publicly documented")

// ErrWrongFormat reports an element used with a value of the wrong kind.
var ErrWrongFormat = errors.New("bcd: wrong element format")

// Well-known objects.
const (
	BootManager = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
	// Default is an alias: the boot manager's default object.
	Default = "{default}"
)

// ElementType is a BCD element type: class in bits 28–31, format in bits
// 24–27, subtype below.
type ElementType uint32

// Public element types.
const (
	Device           ElementType = 0x11000001 // library: boot device
	Path             ElementType = 0x12000002 // library: application path
	Description      ElementType = 0x12000004 // library: description
	OSDevice         ElementType = 0x21000001 // OS loader: OS device
	SystemRoot       ElementType = 0x22000002 // OS loader: system root
	DefaultObject    ElementType = 0x23000003 // boot manager: default object
	TestSigning      ElementType = 0x16000049 // library: test signing allowed
	RestartOnFailure ElementType = 0x16000053 // library: restart on failure
)

// Format is how an element's value is encoded.
type Format uint8

// Element formats (bits 24–27 of the type).
const (
	FormatDevice      Format = 1
	FormatString      Format = 2
	FormatObject      Format = 3
	FormatObjectList  Format = 4
	FormatInteger     Format = 5
	FormatBoolean     Format = 6
	FormatIntegerList Format = 7
)

// Format returns the type's value format.
func (t ElementType) Format() Format { return Format(t >> 24 & 0xF) }

func (t ElementType) String() string { return fmt.Sprintf("%08x", uint32(t)) }

// Element is one element of an object, its value in registry form.
type Element struct {
	Type  ElementType
	Value *regf.Value
}

// Object is a BCD object: an id, a type and its elements.
type Object struct {
	ID       string
	Type     uint32
	Elements []Element
}

// Store is a BCD store held in a hive.
type Store struct{ h *regf.Hive }

// Open wraps a hive that holds a BCD store.
func Open(h *regf.Hive) (*Store, error) {
	if h.Lookup("Objects") == nil {
		return nil, errors.New("bcd: hive has no Objects key; not a BCD store")
	}
	return &Store{h: h}, nil
}

// New returns an empty store.
func New() *Store {
	h := regf.New()
	d, _ := h.CreateKey("Description")
	d.SetValue("KeyName", regf.RegSZ, regf.StringData("BCD00000000"))
	h.CreateKey("Objects")
	return &Store{h: h}
}

// Hive is the hive the store lives in (write it with Hive().WriteFile).
func (s *Store) Hive() *regf.Hive { return s.h }

// Objects lists every object, sorted by id.
func (s *Store) Objects() ([]*Object, error) {
	var out []*Object
	for _, k := range s.h.Lookup("Objects").Subkeys() {
		o, err := s.Object(k.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// resolve maps {default} to the boot manager's default object.
func (s *Store) resolve(id string) (string, error) {
	if !strings.EqualFold(id, Default) {
		return id, nil
	}
	v, err := s.Element(BootManager, DefaultObject)
	if err != nil {
		return "", fmt.Errorf("bcd: resolving {default}: %w", err)
	}
	return v.Text()
}

func (s *Store) objectKey(id string) (*regf.Key, string, error) {
	id, err := s.resolve(id)
	if err != nil {
		return nil, "", err
	}
	k := s.h.Lookup(`Objects\` + id)
	if k == nil {
		return nil, id, fmt.Errorf("bcd: object %s: %w", id, regf.ErrNotFound)
	}
	return k, id, nil
}

// Object reads one object (id may be {default}).
func (s *Store) Object(id string) (*Object, error) {
	k, id, err := s.objectKey(id)
	if err != nil {
		return nil, err
	}
	o := &Object{ID: k.Name()}
	if d := k.Lookup("Description"); d != nil {
		if v := d.Value("Type"); v != nil {
			n, err := v.Uint()
			if err != nil {
				return nil, fmt.Errorf("bcd: object %s type: %w", id, err)
			}
			o.Type = uint32(n)
		}
	}
	if els := k.Subkey("Elements"); els != nil {
		for _, e := range els.Subkeys() {
			t, err := strconv.ParseUint(e.Name(), 16, 32)
			if err != nil || len(e.Name()) != 8 {
				return nil, fmt.Errorf("bcd: object %s: element key %q is not a type", id, e.Name())
			}
			if v := e.Value("Element"); v != nil {
				o.Elements = append(o.Elements, Element{ElementType(t), v})
			}
		}
	}
	return o, nil
}

// CreateObject adds an object of the given type (id is "{guid}").
func (s *Store) CreateObject(id string, typ uint32) error {
	if len(id) != 38 || id[0] != '{' || id[37] != '}' {
		return fmt.Errorf("bcd: object id %q is not a {guid}", id)
	}
	d, err := s.h.CreateKey(`Objects\` + id + `\Description`)
	if err != nil {
		return err
	}
	if _, err := s.h.CreateKey(`Objects\` + id + `\Elements`); err != nil {
		return err
	}
	return d.SetValue("Type", regf.RegDWord, regf.DWordData(typ))
}

// Element returns an element's stored value.
func (s *Store) Element(id string, t ElementType) (*regf.Value, error) {
	k, id, err := s.objectKey(id)
	if err != nil {
		return nil, err
	}
	var v *regf.Value
	if e := k.Lookup(`Elements\` + t.String()); e != nil {
		v = e.Value("Element")
	}
	if v == nil {
		return nil, fmt.Errorf("bcd: object %s element %s: %w", id, t, regf.ErrNotFound)
	}
	return v, nil
}

func (s *Store) set(id string, t ElementType, want Format, typ regf.ValueType, data []byte) error {
	if t.Format() != want {
		return fmt.Errorf("%w: element %s has format %d, not %d", ErrWrongFormat, t, t.Format(), want)
	}
	k, _, err := s.objectKey(id)
	if err != nil {
		return err
	}
	e, err := k.CreatePath(`Elements\` + t.String())
	if err != nil {
		return err
	}
	return e.SetValue("Element", typ, data)
}

// SetString sets a string element (REG_SZ).
func (s *Store) SetString(id string, t ElementType, v string) error {
	return s.set(id, t, FormatString, regf.RegSZ, regf.StringData(v))
}

// SetBoolean sets a boolean element (one byte of REG_BINARY).
func (s *Store) SetBoolean(id string, t ElementType, v bool) error {
	b := []byte{0}
	if v {
		b[0] = 1
	}
	return s.set(id, t, FormatBoolean, regf.RegBinary, b)
}

// SetInteger sets an integer element (8 bytes of REG_BINARY, little-endian).
func (s *Store) SetInteger(id string, t ElementType, v uint64) error {
	return s.set(id, t, FormatInteger, regf.RegBinary, regf.QWordData(v))
}

// SetObject sets an object reference element ("{guid}" as REG_SZ).
func (s *Store) SetObject(id string, t ElementType, ref string) error {
	return s.set(id, t, FormatObject, regf.RegSZ, regf.StringData(ref))
}

// SetObjectList sets an object list element (REG_MULTI_SZ).
func (s *Store) SetObjectList(id string, t ElementType, refs []string) error {
	return s.set(id, t, FormatObjectList, regf.RegMultiSZ, regf.MultiStringData(refs))
}

// String reads a string or object element.
func (s *Store) String(id string, t ElementType) (string, error) {
	v, err := s.Element(id, t)
	if err != nil {
		return "", err
	}
	return v.Text()
}

// Boolean reads a boolean element.
func (s *Store) Boolean(id string, t ElementType) (bool, error) {
	v, err := s.Element(id, t)
	if err != nil {
		return false, err
	}
	if t.Format() != FormatBoolean || len(v.Data) == 0 {
		return false, fmt.Errorf("%w: element %s is not a boolean", ErrWrongFormat, t)
	}
	return v.Data[0] != 0, nil
}

// Integer reads an integer element.
func (s *Store) Integer(id string, t ElementType) (uint64, error) {
	v, err := s.Element(id, t)
	if err != nil {
		return 0, err
	}
	if t.Format() != FormatInteger || len(v.Data) != 8 {
		return 0, fmt.Errorf("%w: element %s is not an integer", ErrWrongFormat, t)
	}
	return binary.LittleEndian.Uint64(v.Data), nil
}

// SetDevice would write a device element; their binary layout is not
// public, so it always fails with ErrNotPublic.
func (s *Store) SetDevice(id string, t ElementType, spec string) error {
	return fmt.Errorf("%w: device element %s (%q) of object %s", ErrNotPublic, t, spec, id)
}

// SetBootPaths points an OS loader object at a Windows installation: the
// public part of the utility VM's CIM boot configuration (path and system
// root).
func (s *Store) SetBootPaths(id, winload, systemRoot string) error {
	if err := s.SetString(id, Path, winload); err != nil {
		return err
	}
	return s.SetString(id, SystemRoot, systemRoot)
}

// ConfigureCIMBoot would create the CimFS and composite device objects and
// point {default} at them. The element types of cimfsparentdevice,
// cimfsrootdirectory, primarydevice and secondarydevice and the encoding of
// cimfs and composite devices are not public, so it fails with ErrNotPublic
// before changing anything.
func (s *Store) ConfigureCIMBoot(diskID, partitionID, cimPath string) error {
	return fmt.Errorf("%w: CIM boot needs the cimfs and composite device elements "+
		"(disk %s, partition %s, cim %s)", ErrNotPublic, diskID, partitionID, cimPath)
}
