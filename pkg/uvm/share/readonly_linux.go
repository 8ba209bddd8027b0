package share

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// readOnlyView makes dir (created, must not exist) a recursive, read-only
// bind mount of src that does not propagate anywhere. virtiofsd serves the
// view instead of src: whatever the guest asks, the host kernel refuses
// writes (EROFS), also after the guest remounts its side read-write. The
// flag is per mount, so src itself stays writable on the host.
func readOnlyView(src, dir string) (err error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("read-only view of %s: %w", src, err)
	}
	defer func() {
		if err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
			os.Remove(dir)
		}
	}()
	if err := unix.Mount(src, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("read-only view of %s: bind: %w", src, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("read-only view of %s: make private: %w", src, err)
	}
	// mount_setattr covers submounts too; before Linux 5.12 only the top
	// mount can be remounted read-only.
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
	err = unix.MountSetattr(unix.AT_FDCWD, dir, unix.AT_RECURSIVE, attr)
	if errors.Is(err, unix.ENOSYS) {
		err = unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, "")
	}
	if err != nil {
		return fmt.Errorf("read-only view of %s: %w", src, err)
	}
	return nil
}

// removeView undoes readOnlyView; a missing view is fine.
func removeView(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount read-only view %s: %w", dir, err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove read-only view %s: %w", dir, err)
	}
	return nil
}
