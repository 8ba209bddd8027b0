// Package atomicfile writes files that appear whole or not at all.
package atomicfile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Write writes data to path through a temp file in the same directory and a
// rename. With sync it also flushes the data and the directory entry.
func Write(path string, data []byte, perm os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if sync {
		if err := syncOpen(tmp); err != nil {
			return fail(err)
		}
	}
	if err := tmp.Close(); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !sync {
		if err := os.Rename(name, path); err != nil {
			os.Remove(name)
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}
	if err := Rename(name, path); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteJSON marshals v (indented) and writes it with Write.
func WriteJSON(path string, v any, sync bool) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return Write(path, append(b, '\n'), 0o600, sync)
}

// ReadJSON reads and decodes a JSON file.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// SyncDir flushes a directory's entries.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	notify(Op{Kind: OpSyncDir, Path: dir})
	return nil
}

// Create makes a new file at path whose content fill writes into a temp file
// in the same directory. Only when fill succeeds is the file flushed and
// linked into place; an existing path is never replaced (os.ErrExist), and
// on any failure nothing is left behind.
func Create(path string, perm os.FileMode, fill func(*os.File) error) (err error) {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create %s: %w", path, os.ErrExist)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := fill(tmp); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := syncOpen(tmp); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	// A link, unlike a rename, fails when path appeared meanwhile.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	notify(Op{Kind: OpLink, Path: tmp.Name(), To: path})
	return SyncDir(dir)
}
