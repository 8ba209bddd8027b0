//go:build !linux

package inroot

import "os"

var errNotExist = os.ErrNotExist
