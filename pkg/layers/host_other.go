//go:build !linux

package layers

import (
	"context"
	"errors"
	"path/filepath"
)

// Host mounts layers on the host; it needs Linux loop devices and overlayfs.
type Host struct {
	StateDir string
}

var errHostUnsupported = errors.New("host layer mounts need Linux (loop devices and overlayfs)")

// ReconcileReport says what Reconcile repaired.
type ReconcileReport struct {
	RolledBack []string `json:"rolledBack,omitempty"`
	Unmounted  []string `json:"unmounted,omitempty"`
	Detached   []string `json:"detached,omitempty"`
	Kept       []string `json:"kept,omitempty"`
}

func (h *Host) RootfsPath(id string) string {
	return filepath.Join(h.StateDir, "containers", id, "rootfs")
}
func (h *Host) Mount(context.Context, string, Layers) (string, error) { return "", errHostUnsupported }
func (h *Host) Unmount(context.Context, string, UnmountOp) error      { return errHostUnsupported }
func (h *Host) IsMounted(string) bool                                 { return false }
func (h *Host) Refs(string) ([]string, error)                         { return nil, errHostUnsupported }
func (h *Host) Hold(context.Context, string, string) (string, error)  { return "", errHostUnsupported }
func (h *Host) Release(context.Context, string, string) error         { return errHostUnsupported }
func (h *Host) SetHeld(context.Context, string, []string, string) ([]string, error) {
	return nil, errHostUnsupported
}
func (h *Host) Reconcile(context.Context, string) (ReconcileReport, error) {
	return ReconcileReport{}, nil
}
