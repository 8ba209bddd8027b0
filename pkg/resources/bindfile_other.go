//go:build !linux

package resources

import "errors"

func bindFile(src, dst string) error { return errors.New("single-file shares need Linux bind mounts") }
func unbindFile(dst string) error    { return nil }
