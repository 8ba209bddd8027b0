package atomicfile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

var errLocked = errors.New("locked by another process")

// lockFile locks f's first byte exclusively; without wait it fails with
// errLocked when another handle holds it. (Windows cannot remove a file
// another process has open in any case.)
func lockFile(f *os.File, wait bool) error {
	flags := uint32(windows.LOCKFILE_EXCLUSIVE_LOCK)
	if !wait {
		flags |= windows.LOCKFILE_FAIL_IMMEDIATELY
	}
	err := windows.LockFileEx(windows.Handle(f.Fd()), flags, 0, 1, 0, new(windows.Overlapped))
	switch {
	case err == nil:
		return nil
	case err == windows.ERROR_LOCK_VIOLATION:
		return errLocked
	}
	return fmt.Errorf("lock %s: %w", f.Name(), err)
}
