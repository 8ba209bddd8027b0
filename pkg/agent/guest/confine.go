// Package guest is the guest side of the agent protocol: it serves the
// host's requests inside the utility VM. Every path a request names must
// lie under an allowed root and may not pass through a symlink, so the host
// (or a container's image) cannot point the agent elsewhere.
package guest

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/layervisor/layervisor/pkg/agent"
)

func errOutside(p string) error {
	return &agent.Error{Code: agent.CodeOutsideRoots, Message: fmt.Sprintf("path %q is outside the allowed roots", p)}
}

// confine checks p: absolute, clean, under one of roots, and no existing
// component below the root is a symlink.
func confine(roots []string, p string) (string, error) {
	if p == "" || !path.IsAbs(p) || strings.Contains(p, "\x00") {
		return "", &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("path %q is not absolute", p)}
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", errOutside(p)
		}
	}
	clean := path.Clean(p)
	var root string
	for _, r := range roots {
		if clean == r || strings.HasPrefix(clean, r+"/") {
			root = r
			break
		}
	}
	if root == "" {
		return "", errOutside(p)
	}
	// Walk from the root down; stop at the first missing component.
	cur := root
	for _, part := range strings.Split(strings.TrimPrefix(clean, root), "/") {
		if part == "" {
			continue
		}
		cur = path.Join(cur, part)
		st, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return "", &agent.Error{Code: agent.CodeOutsideRoots, Message: fmt.Sprintf("path %q passes through symlink %s", p, cur)}
		}
	}
	return clean, nil
}
