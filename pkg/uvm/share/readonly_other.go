//go:build !linux

package share

import "errors"

func readOnlyView(src, dir string) error {
	return errors.New("read-only shares need Linux bind mounts")
}

func removeView(dir string) error { return nil }
