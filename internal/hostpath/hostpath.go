// Package hostpath turns a host path given to a utility VM's attachment
// controller into the key it is reference-counted by.
package hostpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Resolve makes one key per file: absolute, symlinks resolved, and it must
// exist (QEMU would otherwise create an empty file for some drivers). fi
// lets the caller check the kind of file it accepts. Errors name hostPath
// as given.
func Resolve(hostPath string) (resolved string, fi os.FileInfo, err error) {
	if hostPath == "" {
		return "", nil, errors.New("empty host path")
	}
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return "", nil, fmt.Errorf("host path %q: %w", hostPath, err)
	}
	resolved, err = filepath.EvalSymlinks(abs)
	if err != nil {
		return "", nil, fmt.Errorf("host path %q: %w", hostPath, err)
	}
	fi, err = os.Stat(resolved)
	if err != nil {
		return "", nil, fmt.Errorf("host path %q: %w", hostPath, err)
	}
	return resolved, fi, nil
}
