package share

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// exposedFile is a private directory that holds one shared file and nothing
// else, so that sharing it does not expose the file's siblings.
type exposedFile struct {
	dir   string
	bound string // the placeholder a bind mount covers; "" for a hard link
}

// exposeFile makes dir (which must not exist) hold src under its base name:
// a hard link when possible, else a bind mount onto an empty placeholder.
func exposeFile(dir, src string) (_ *exposedFile, err error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	dst := filepath.Join(dir, filepath.Base(src))
	linkErr := os.Link(src, dst)
	if linkErr == nil {
		return &exposedFile{dir: dir}, nil
	}
	// Hard links fail across file systems or when not permitted
	// (fs.protected_hardlinks): bind the file instead.
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := bindFile(src, dst); err != nil {
		return nil, errors.Join(fmt.Errorf("hard link: %w", linkErr), fmt.Errorf("bind mount: %w", err))
	}
	return &exposedFile{dir: dir, bound: dst}, nil
}

// remove undoes exposeFile; a missing directory is fine.
func (e *exposedFile) remove() error {
	if e.bound != "" {
		if err := unbindFile(e.bound); err != nil {
			return fmt.Errorf("unmount %s: %w", e.bound, err)
		}
		e.bound = ""
	}
	if err := os.RemoveAll(e.dir); err != nil {
		return fmt.Errorf("remove %s: %w", e.dir, err)
	}
	return nil
}
