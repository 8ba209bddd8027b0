package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Temp is a temp file being written by a live process. It holds an
// exclusive lock on itself from its creation until Publish or Discard, so
// RemoveStale, run by another process, removes only the temp files of
// writers that died (the kernel drops a dead process's locks).
type Temp struct {
	*os.File
	done bool
}

// CreateTemp creates a new temp file in dir, named as os.CreateTemp names
// it from pattern, and locks it.
func CreateTemp(dir, pattern string) (*Temp, error) {
	for {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		if err := lockFile(f, true); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, err
		}
		// RemoveStale may have taken the lock and removed the file between
		// its creation and our lock: a lock nobody else can see. Again.
		same, err := stillNamed(f, f.Name())
		if same {
			return &Temp{File: f}, nil
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("temp file %s: %w", f.Name(), err)
		}
	}
}

// Publish flushes the file, renames it to final and flushes final's
// directory, then closes it. The lock is held until after the rename, so
// RemoveStale never removes a complete file on its way into place.
func (t *Temp) Publish(final string) error {
	if t.done {
		return fmt.Errorf("publish %s: %s already published or discarded", final, t.Name())
	}
	if err := syncOpen(t.File); err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	if runtime.GOOS == "windows" {
		// Windows renames no file that is open without FILE_SHARE_DELETE.
		if err := t.Close(); err != nil {
			return fmt.Errorf("publish %s: %w", final, err)
		}
	}
	if err := Rename(t.Name(), final); err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	t.done = true
	if err := t.Close(); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	return nil
}

// Discard closes and removes the file unless it was published; it is meant
// to be deferred right after CreateTemp.
func (t *Temp) Discard() {
	if t == nil || t.done {
		return
	}
	t.done = true
	// Removed while still locked, so RemoveStale never sees it unlocked
	// (Windows removes only closed files).
	if os.Remove(t.Name()) != nil {
		t.Close()
		os.Remove(t.Name())
		return
	}
	t.Close()
}

// RemoveStale removes the regular files in dir whose names start with
// prefix and that no process holds locked: what writers using CreateTemp
// left when they were killed. It returns the paths it removed; a missing
// dir is not an error.
func RemoveStale(dir, prefix string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		ok, err := removeUnlocked(p)
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok:
			removed = append(removed, p)
		}
	}
	return removed, errors.Join(errs...)
}

// removeUnlocked removes p if it can take p's lock without waiting, and p
// still names the locked file (its writer may have renamed it into place
// and a new temp file taken the name since).
func removeUnlocked(p string) (bool, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // published or discarded meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("stale temp file %s: %w", p, err)
	}
	defer f.Close()
	if err := lockFile(f, false); errors.Is(err, errLocked) {
		return false, nil // its writer is alive
	} else if err != nil {
		return false, fmt.Errorf("stale temp file %s: %w", p, err)
	}
	if same, err := stillNamed(f, p); err != nil || !same {
		return false, err
	}
	if err := os.Remove(p); err != nil {
		return false, fmt.Errorf("stale temp file %s: %w", p, err)
	}
	return true, nil
}

// stillNamed reports whether path names the open file f.
func stillNamed(f *os.File, path string) (bool, error) {
	held, err := f.Stat()
	if err != nil {
		return false, err
	}
	named, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(held, named), nil
}
