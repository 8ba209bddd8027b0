package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"

	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/snapshotter"
)

// ErrNoLayervisorRootfs is returned for a task whose root file system does
// not come from the layervisor snapshotter.
var ErrNoLayervisorRootfs = errors.New("the layervisor runtime needs a root file system from the layervisor snapshotter (ctr run --snapshotter layervisor)")

// errNotLayerImages: the rootfs mount is not backed by layer images.
var errNotLayerImages = errors.New("not backed by layer images")

// layerFolders turns a task's rootfs mounts (the layervisor snapshotter's
// one overlay, or bind for a single layer) into hcsshim-ordered layer
// folders for resources.Setup: the layer folders behind the mount's lower
// directories, top-most first, then scratch, a folder of the container's
// own. Nothing is mounted on the host: the layer images are attached to
// the UVM.
//
// The snapshot's own scratch (its upper directory) is mounted on the host
// by the snapshotter, so it cannot also be a disk of the VM: the container
// writes to scratch instead, thrown away with the task.
func layerFolders(rootfs []*types.Mount, scratch string) ([]string, error) {
	if len(rootfs) != 1 {
		return nil, fmt.Errorf("%w: got %d rootfs mounts, want 1", ErrNoLayervisorRootfs, len(rootfs))
	}
	m := mount.Mount{Type: rootfs[0].Type, Source: rootfs[0].Source, Options: rootfs[0].Options}
	imgs, err := snapshotter.LayerImages(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %w: %w", ErrNoLayervisorRootfs, errNotLayerImages, err)
	}
	if len(imgs) == 0 {
		// (Plain overlay snapshots come here: their lower directories are
		// no layer images' content.)
		return nil, fmt.Errorf("%w: the snapshot has no layers: %w", ErrNoLayervisorRootfs, errNotLayerImages)
	}
	folders := make([]string, 0, len(imgs)+1)
	for _, img := range imgs {
		if filepath.Base(img) != layers.LayerFile {
			return nil, fmt.Errorf("%w: %s is not a layer image (%s)", ErrNoLayervisorRootfs, img, layers.LayerFile)
		}
		if _, err := os.Stat(img); err != nil {
			return nil, fmt.Errorf("layer image: %w", err)
		}
		folders = append(folders, filepath.Dir(img))
	}
	return append(folders, scratch), nil
}

// plainRootfs tells a snapshot mount the host can mount itself, as runc's
// shim would: one overlay (containerd's overlayfs snapshotter) or bind
// (its first snapshot of an image without a parent). Its options are
// containerd's own.
func plainRootfs(rootfs []*types.Mount) bool {
	if len(rootfs) != 1 {
		return false
	}
	switch rootfs[0].Type {
	case "overlay", "bind":
		return true
	}
	return false
}

// mountHostRootfs mounts a plain snapshot at target (the bundle's rootfs,
// where containerd's bundle clean-up unmounts it too).
func mountHostRootfs(rootfs []*types.Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return fmt.Errorf("rootfs mount point: %w", err)
	}
	m := mount.Mount{Type: rootfs[0].Type, Source: rootfs[0].Source, Options: rootfs[0].Options}
	if err := mount.All([]mount.Mount{m}, target); err != nil {
		return fmt.Errorf("mount the %s snapshot at %s: %w", m.Type, target, err)
	}
	return nil
}

// unmountHostRootfs undoes mountHostRootfs.
func unmountHostRootfs(target string) error {
	if err := mount.UnmountRecursive(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
