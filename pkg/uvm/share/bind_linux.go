package share

import (
	"errors"
	"syscall"
)

func bindFile(src, dst string) error {
	return syscall.Mount(src, dst, "", syscall.MS_BIND, "")
}

func unbindFile(dst string) error {
	err := syscall.Unmount(dst, syscall.MNT_DETACH)
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
		return nil // not mounted (any more)
	}
	return err
}
