package regf

import (
	"fmt"
	"os"
	"time"
)

// The functions below do one edit of a hive file each, as `layervisor
// hive` does: every change is EditFile's read, edit and atomic rewrite, so
// on any error the file is left as it was.

// CreateOptions tune CreateFile.
type CreateOptions struct {
	// RootName names the root key (default "ROOT").
	RootName string
	// Layered makes a delta (layered-keys) hive.
	Layered bool
}

// CreateFile writes a new, empty hive at path whose root key carries the
// default security descriptor. An existing file is not overwritten.
func CreateFile(path string, o CreateOptions) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	h := New()
	h.Layered = o.Layered
	if o.RootName != "" {
		k, err := NewKey(o.RootName)
		if err != nil {
			return err
		}
		k.Security, k.Flags = h.Root.Security, h.Root.Flags
		h.Root = k
	}
	return h.WriteFile(path)
}

// ReadFileKey reads the hive file at path (as ReadFile does) and finds the
// key at keyPath in it ("" is the root); an error names path.
func ReadFileKey(path, keyPath string) (*Hive, *Key, error) {
	h, err := ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	k, err := h.OpenKey(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, k, nil
}

// CreateFileKey creates the key at keyPath, and missing keys on the way, in
// the hive file at path.
func CreateFileKey(path, keyPath string) error {
	return EditFile(path, func(h *Hive) error {
		_, err := h.CreateKey(keyPath)
		return err
	})
}

// SetFileValue sets value name ("" for the default value) of the key at
// keyPath in the hive file at path, creating missing keys; the key's
// modification time becomes now.
func SetFileValue(path, keyPath, name string, typ ValueType, data []byte) error {
	return EditFile(path, func(h *Hive) error {
		k, err := h.CreateKey(keyPath)
		if err != nil {
			return err
		}
		k.Modified = time.Now().UTC()
		return k.SetValue(name, typ, data)
	})
}

// DeleteFileKey deletes the key at keyPath and its subtree from the hive
// file at path; a missing key is an error wrapping ErrNotFound.
func DeleteFileKey(path, keyPath string) error {
	return EditFile(path, func(h *Hive) error { return h.DeleteKey(keyPath) })
}

// DeleteFileValue deletes value name of the key at keyPath from the hive
// file at path; a missing key or value is an error wrapping ErrNotFound.
func DeleteFileValue(path, keyPath, name string) error {
	return EditFile(path, func(h *Hive) error {
		k, err := h.OpenKey(keyPath)
		if err != nil {
			return err
		}
		if !k.DeleteValue(name) {
			return fmt.Errorf("key %q has no value %s: %w", keyPath, DisplayName(name), ErrNotFound)
		}
		return nil
	})
}

// CombineFiles reads the hive files a and b, combines them with op (Merge,
// Diff) and writes the result atomically to out.
func CombineFiles(a, b, out string, op func(a, b *Hive) (*Hive, error)) error {
	ha, err := ReadFile(a)
	if err != nil {
		return err
	}
	hb, err := ReadFile(b)
	if err != nil {
		return err
	}
	h, err := op(ha, hb)
	if err != nil {
		return fmt.Errorf("%s, %s: %w", a, b, err)
	}
	return h.WriteFile(out)
}
