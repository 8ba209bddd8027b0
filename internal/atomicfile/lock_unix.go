//go:build unix

package atomicfile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

var errLocked = errors.New("locked by another process")

// lockFile takes an exclusive flock on f; without wait it fails with
// errLocked when another open file holds it.
func lockFile(f *os.File, wait bool) error {
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err := unix.Flock(int(f.Fd()), how)
		switch {
		case err == nil:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.EWOULDBLOCK:
			return errLocked
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
}
