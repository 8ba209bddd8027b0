//go:build !linux

package share

import "errors"

func bindFile(src, dst string) error { return errors.New("bind mounts are only supported on Linux") }

func unbindFile(dst string) error { return nil }
