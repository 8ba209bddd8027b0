package uvm

import (
	"fmt"
	"os"
)

func allocated(fi os.FileInfo) int64 { return fi.Size() }

// fileIdentity names this version of the file at p: size and mtime.
func fileIdentity(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", fi.Size(), fi.ModTime().UnixNano()), nil
}
