package layers

import (
	"fmt"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/layerconv/layerfmt"
	"github.com/layervisor/layervisor/pkg/layers/overlay"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// Plan is a container's root file system described once — which images,
// top-most first, over which scratch, combined how — for the host
// (Host.Mount) and a utility VM (InUVM.Mount) to carry out. Only where the
// images are mounted differs between the two.
type Plan struct {
	ID string
	// Layers are the resolved read-only layer images, top-most first.
	Layers []string
	// Scratch is the resolved scratch image (raw ext4 or VHDX, by name).
	Scratch string
}

// NewPlan checks the container id and resolves the images of l: symlinks
// (a shared scratch) are followed, a missing image is an error naming its
// folder.
func NewPlan(id string, l Layers) (Plan, error) {
	if err := validID(id); err != nil {
		return Plan{}, err
	}
	if len(l.ReadOnly) == 0 || l.Scratch == "" {
		return Plan{}, ErrTooFewLayers
	}
	p := Plan{ID: id, Layers: make([]string, len(l.ReadOnly))}
	for i, f := range l.ReadOnly {
		img, err := filepath.EvalSymlinks(layerImage(f))
		if err != nil {
			return Plan{}, fmt.Errorf("layer folder %s: %w", f, err)
		}
		p.Layers[i] = img
	}
	var err error
	if p.Scratch, err = ScratchImage(l.Scratch); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// LayerFormat is how a layer image is opened: ext4 followed by a fixed VHD
// footer that the guest must not see.
const LayerFormat = scsi.FormatVHDFixed

// ScratchIsVHDX reports whether the scratch is a VHDX (the VM path only).
func (p Plan) ScratchIsVHDX() bool { return filepath.Ext(p.Scratch) == ".vhdx" }

// ScratchFormat is how the scratch is opened. It comes from the name the
// store gave the image when it made it (sandbox.img or sandbox.vhdx), never
// from its content: the guest writes the scratch, and a VHD footer or VHDX
// signature it wrote must not change how the host opens it next time.
func (p Plan) ScratchFormat() scsi.Format {
	if p.ScratchIsVHDX() {
		return scsi.FormatVHDX
	}
	return scsi.FormatRaw
}

// Overlay is the plan's overlay, given where its layer images (in Layers
// order) and its scratch are mounted — host paths or guest paths alike.
func (p Plan) Overlay(layerMounts []string, scratchMount string) (overlay.Mount, error) {
	if len(layerMounts) != len(p.Layers) {
		return overlay.Mount{}, fmt.Errorf("container %s: %d layer mounts for %d layers", p.ID, len(layerMounts), len(p.Layers))
	}
	ov := overlay.ForContainer(p.ID, layerMounts, layerfmt.ContentDir, scratchMount)
	if _, err := ov.Options(); err != nil {
		return overlay.Mount{}, fmt.Errorf("container %s: %w", p.ID, err)
	}
	return ov, nil
}
