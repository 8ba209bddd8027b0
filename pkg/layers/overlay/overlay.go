// Package overlay describes the overlay mount that combines a container's
// layers, once, for both places that mount it: the host (process
// isolation) and the guest agent (hypervisor isolation). It has no
// dependencies so the guest agent can use it.
package overlay

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// MaxOptions is the longest option string overlayfs takes: the kernel
// copies mount data into one page.
const MaxOptions = 4095

// Mount is an overlay: read-only lowers (top-most first) under a writable
// upper, with its work directory on the same file system.
type Mount struct {
	Lowers []string `json:"lowers"`
	Upper  string   `json:"upper"`
	Work   string   `json:"work"`
}

// ForContainer is the overlay of container id whose layer images are
// mounted at layerMounts (top-most first) and whose scratch is mounted at
// scratchMount. The layer content sits in contentDir of each image (beside
// lost+found, which must not show); upper and work are per container on
// the scratch so that containers sharing a scratch keep separate changes.
func ForContainer(id string, layerMounts []string, contentDir, scratchMount string) Mount {
	m := Mount{Lowers: make([]string, len(layerMounts))}
	for i, mp := range layerMounts {
		m.Lowers[i] = path.Join(mp, contentDir)
	}
	base := path.Join(scratchMount, "scratch", id)
	m.Upper, m.Work = path.Join(base, "upper"), path.Join(base, "work")
	return m
}

// Options returns the overlayfs mount options, or an error when they do
// not fit in a page or a path would be misread (overlayfs splits lowerdir
// on ':' and options on ',').
func (m Mount) Options() (string, error) {
	if len(m.Lowers) == 0 {
		return "", errors.New("overlay needs at least one lower layer")
	}
	if m.Upper == "" || m.Work == "" {
		return "", errors.New("overlay needs an upper and a work directory")
	}
	for _, p := range append(append([]string(nil), m.Lowers...), m.Upper, m.Work) {
		if !path.IsAbs(p) {
			return "", fmt.Errorf("overlay path %q is not absolute", p)
		}
		if strings.ContainsAny(p, ":,\\") {
			return "", fmt.Errorf("overlay path %q contains ':', ',' or '\\'", p)
		}
	}
	opts := "lowerdir=" + strings.Join(m.Lowers, ":") + ",upperdir=" + m.Upper + ",workdir=" + m.Work
	if len(opts) > MaxOptions {
		return "", fmt.Errorf("%d layers make overlay options too long (%d bytes, at most %d)", len(m.Lowers), len(opts), MaxOptions)
	}
	return opts, nil
}
