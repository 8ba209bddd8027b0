// Package layers mounts and unmounts a container's layers: the read-only
// layer images plus the writable scratch, combined into one root file
// system with overlayfs — on the host (process isolation) or, with a utility
// VM, inside the VM (hypervisor isolation).
package layers

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// File names inside layer folders.
const (
	LayerFile   = "layer.vhd"    // read-only layer: ext4 + fixed VHD footer
	ScratchFile = "sandbox.img"  // writable scratch: ext4 (raw)
	ScratchVHDX = "sandbox.vhdx" // the same ext4 in a VHDX (VM path only)
)

// ErrVHDXScratchOnHost is returned when a VHDX scratch is mounted on the
// host: the host path loop-mounts raw ext4, and the kernel cannot read VHDX.
var ErrVHDXScratchOnHost = errors.New("a VHDX scratch can only be used in a utility VM (create the container with the raw scratch format for process isolation)")

// ScratchImage returns the resolved path of the scratch image in a scratch
// folder: sandbox.img or sandbox.vhdx, either possibly a symlink to a
// shared scratch.
func ScratchImage(folder string) (string, error) {
	var firstErr error
	for _, name := range []string{ScratchFile, ScratchVHDX} {
		p, err := filepath.EvalSymlinks(filepath.Join(folder, name))
		if err == nil {
			return p, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return "", fmt.Errorf("scratch folder %s: %w", folder, firstErr)
}

// Layers names a container's layer folders with an explicit type instead of
// hcsshim's positional list.
type Layers struct {
	// ReadOnly holds the read-only layer folders, top-most first, base last.
	ReadOnly []string
	// Scratch is the container's scratch folder. Its ScratchFile may be a
	// symlink to another container's scratch (shared scratch).
	Scratch string
}

// ErrTooFewLayers is returned for fewer than two layer folders.
var ErrTooFewLayers = errors.New("need at least two layers - base and scratch")

// FromFolders converts hcsshim's form — read-only layer folders top-most
// first, then the scratch folder — to Layers.
func FromFolders(folders []string) (Layers, error) {
	if len(folders) < 2 {
		return Layers{}, ErrTooFewLayers
	}
	for _, f := range folders {
		if f == "" {
			return Layers{}, fmt.Errorf("layer folders %q: empty folder name", folders)
		}
	}
	ro := append([]string(nil), folders[:len(folders)-1]...)
	return Layers{ReadOnly: ro, Scratch: folders[len(folders)-1]}, nil
}

// Folders returns the hcsshim positional form.
func (l Layers) Folders() []string {
	return append(append([]string(nil), l.ReadOnly...), l.Scratch)
}

// UnmountOp selects what an unmount releases.
type UnmountOp uint

const (
	UnmountSCSI UnmountOp = 1 << iota
	UnmountVPMem
	UnmountShares
	UnmountAll = UnmountSCSI | UnmountVPMem | UnmountShares
)

func (o UnmountOp) String() string {
	if o == UnmountAll {
		return "all"
	}
	var parts []string
	for _, p := range []struct {
		bit  UnmountOp
		name string
	}{{UnmountSCSI, "scsi"}, {UnmountVPMem, "vpmem"}, {UnmountShares, "shares"}} {
		if o&p.bit != 0 {
			parts = append(parts, p.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "+")
}

// ErrNotMounted is returned when unmounting a container that is not mounted.
var ErrNotMounted = errors.New("container layers are not mounted")

// validID refuses container ids that could escape a state directory.
func validID(id string) error {
	if id == "" || len(id) > 128 || id == "." || id == ".." || strings.ContainsAny(id, "/\\\x00") {
		return fmt.Errorf("invalid container id %q: want 1-128 characters without '/' or '\\'", id)
	}
	return nil
}

// layerImage returns the read-only image inside a layer folder.
func layerImage(folder string) string { return filepath.Join(folder, LayerFile) }
