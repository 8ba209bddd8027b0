package hostrun

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// bindMounts binds each host path into the rootfs, in order, inside the
// helper's private mount namespace (nothing shows on the host, nothing
// outlives the command). Read-only binds are read-only for the whole
// subtree, and without CAP_SYS_ADMIN the command cannot remount them.
func bindMounts(rootfs string, ms []Mount) error {
	for _, m := range ms {
		st, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("bind %s: %w", m.Source, err)
		}
		target, err := resolveIn(rootfs, m.Target)
		if err != nil {
			return fmt.Errorf("bind %s -> %s: %w", m.Source, m.Target, err)
		}
		if err := makeMountpoint(target, st.IsDir()); err != nil {
			return fmt.Errorf("bind %s -> %s: %w", m.Source, m.Target, err)
		}
		if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s -> %s: %w", m.Source, m.Target, err)
		}
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NODEV}
		if m.ReadOnly {
			attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
		}
		if err := unix.MountSetattr(unix.AT_FDCWD, target, unix.AT_RECURSIVE, attr); err != nil {
			return fmt.Errorf("bind %s -> %s: set attributes: %w", m.Source, m.Target, err)
		}
	}
	return nil
}

// makeMountpoint creates what a bind needs at p: a directory, or an empty
// file for a file source. An existing entry of the other kind is an error.
func makeMountpoint(p string, dir bool) error {
	st, err := os.Lstat(p)
	switch {
	case err == nil && st.IsDir() != dir:
		return fmt.Errorf("%s exists in the container and is %s", p, map[bool]string{true: "a directory", false: "not a directory"}[st.IsDir()])
	case err == nil:
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if dir {
		return os.Mkdir(p, 0o755)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// resolveIn maps a container path to a host path under rootfs, following
// the image's symlinks as the container would see them: absolute targets
// restart at rootfs and ".." stops at it, so no link in an image can point
// a mount outside its root. Missing components are left for the caller.
func resolveIn(rootfs, p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("target %q is not an absolute path", p)
	}
	var cur []string // resolved components below rootfs
	todo := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for links := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		full := filepath.Join(append([]string{rootfs}, append(cur, c)...)...)
		st, err := os.Lstat(full)
		if err != nil || st.Mode()&os.ModeSymlink == 0 {
			cur = append(cur, c) // a directory, a file, or missing
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("target %q: too many levels of symbolic links", p)
		}
		dest, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if path.IsAbs(dest) {
			cur = nil
		}
		todo = append(strings.Split(dest, "/"), todo...)
	}
	return filepath.Join(append([]string{rootfs}, cur...)...), nil
}
