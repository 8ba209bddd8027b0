// Package bcd reads and edits a Boot Configuration Data store, which is a
// registry hive: Objects\{guid}\Description holds the object type and
// Objects\{guid}\Elements\<type as 8 hex digits> holds each element's value
// in "Element". [Open] reads a store from a [regf.Hive], [New] starts one.
//
// Strings, booleans, integers, object references and lists use the public
// encodings. Device elements are a 16-byte additional-options object GUID
// followed by a boot-library device descriptor (type, flags, size, then a
// type-specific payload); [EncodeDevice] writes the kinds the utility VM's
// CIM boot needs, from bcdedit-style specs. Not all of them are public
// (README.md has the sources):
//
//   - gpt_partition={disk};{partition}: type 6, public, and what real Windows
//     stores show.
//   - vmbus={interface}: type 7 with the interface GUID as payload, a layout
//     inferred from an API-level header. UNVERIFIED.
//   - composite=0,{options} and cimfs={volume},{options}: types 0xA and 0xB,
//     and the element types primarydevice, secondarydevice, cimfsparentdevice
//     and cimfsrootdirectory, from a third-party source only. UNVERIFIED
//     against Windows' boot manager. Only 0 is accepted in composite=0 (its
//     meaning is not public), and it is not stored.
//
// [Store.ConfigureCIMBoot] applies the effect of the eleven bcdedit commands
// hcsshim ran to boot a utility VM from a CIM.
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

// ErrNotPublic reports a device kind whose encoding is not publicly
// documented at all (not even by a third party).
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

	// Device-options elements (third-party source, see the package doc).
	PrimaryDevice      ElementType = 0x3100000E // composite: first device
	SecondaryDevice    ElementType = 0x3100000F // composite: second device
	CimfsRootDirectory ElementType = 0x32000011 // cimfs: path of the .cim file
	CimfsParentDevice  ElementType = 0x31000012 // cimfs: device holding the .cim
)

// DeviceObjectType is the type of objects made by "bcdedit /create /device".
const DeviceObjectType = 0x30000000

// Objects and GUIDs of the utility VM's CIM boot (hcsshim's constants).
const (
	CimfsOptions     = "{763e9fea-502d-434f-aad9-5fabe9c91a7b}" // "CimFS Device Options"
	CompositeOptions = "{e1787220-d17f-49e7-977a-d8fe4c8537e2}" // "Composite Device Options"
	VmbusDevice      = "{c63c9bdf-5fa5-4208-b03f-6b458b365592}" // the VMBus device holding the CIMs
	BootContainer    = "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}" // = SYSTEM's BootContainerGuid
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

// SetDevice sets a device element from a bcdedit-style spec (see
// EncodeDevice).
func (s *Store) SetDevice(id string, t ElementType, spec string) error {
	b, err := EncodeDevice(spec)
	if err != nil {
		return fmt.Errorf("bcd: object %s element %s: %w", id, t, err)
	}
	return s.set(id, t, FormatDevice, regf.RegBinary, b)
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

// ConfigureCIMBoot has the effect of hcsshim's eleven offline bcdedit
// commands for booting a utility VM from a CIM: {default} restarts on
// failure; a "CimFS Device Options" device object says the .cim file is
// cimPath (relative to the VMBus share, a leading backslash is added) on the
// VMBus device; a "Composite Device Options" object combines the GPT
// partition (diskID, partitionID: "{guid}", braces optional) with that CimFS
// device; {default}'s device and osdevice become that composite device and
// its path and system root point into UtilityVM\Files. Re-running it on an
// edited store gives the same store. Bad input fails before any change; the
// encodings of the new device kinds are third-party (see the package doc).
func (s *Store) ConfigureCIMBoot(diskID, partitionID, cimPath string) error {
	if cimPath == "" || strings.ContainsRune(cimPath, 0) {
		return fmt.Errorf("bcd: CIM path %q is empty or has a NUL", cimPath)
	}
	root := strings.ReplaceAll(cimPath, "/", `\`)
	if !strings.HasPrefix(root, `\`) {
		root = `\` + root
	}
	partition := "gpt_partition={" + strings.Trim(diskID, "{}") + "};{" + strings.Trim(partitionID, "{}") + "}"
	composite := "composite=0," + CompositeOptions
	for _, spec := range []string{partition, composite} {
		if _, err := EncodeDevice(spec); err != nil {
			return fmt.Errorf("bcd: CIM boot: %w", err)
		}
	}
	def, err := s.resolve(Default)
	if err != nil {
		return err
	}
	if _, _, err := s.objectKey(def); err != nil {
		return fmt.Errorf("bcd: CIM boot: default loader: %w", err)
	}
	steps := []func() error{
		func() error { return s.SetBoolean(def, RestartOnFailure, true) },
		func() error { return s.ensureDeviceObject(CimfsOptions, "CimFS Device Options") },
		func() error { return s.SetDevice(CimfsOptions, CimfsParentDevice, "vmbus="+VmbusDevice) },
		func() error { return s.SetString(CimfsOptions, CimfsRootDirectory, root) },
		func() error { return s.ensureDeviceObject(CompositeOptions, "Composite Device Options") },
		func() error { return s.SetDevice(CompositeOptions, PrimaryDevice, partition) },
		func() error {
			return s.SetDevice(CompositeOptions, SecondaryDevice, "cimfs="+BootContainer+","+CimfsOptions)
		},
		func() error { return s.SetDevice(def, Device, composite) },
		func() error { return s.SetDevice(def, OSDevice, composite) },
		func() error { return s.SetString(def, Path, `\UtilityVM\Files\Windows\System32\winload.efi`) },
		func() error { return s.SetString(def, SystemRoot, `\UtilityVM\Files\Windows`) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("bcd: CIM boot step %d of %d: %w", i+1, len(steps), err)
		}
	}
	return nil
}

// ensureDeviceObject is "bcdedit /create id /d description /device", except
// that an existing device object is reused so the edit can be re-run.
func (s *Store) ensureDeviceObject(id, description string) error {
	if o, err := s.Object(id); err == nil {
		if o.Type != DeviceObjectType {
			return fmt.Errorf("bcd: object %s exists with type %#x, not a device object", id, o.Type)
		}
	} else if !errors.Is(err, regf.ErrNotFound) {
		return err
	} else if err := s.CreateObject(id, DeviceObjectType); err != nil {
		return err
	}
	return s.SetString(id, Description, description)
}
