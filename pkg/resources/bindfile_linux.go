package resources

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

func bindFile(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	return nil
}

func unbindFile(dst string) error {
	if err := unix.Unmount(dst, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unbind %s: %w", dst, err)
	}
	return nil
}
