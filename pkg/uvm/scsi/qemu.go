package scsi

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// QEMUHost implements Host over QMP: blockdev-add + device_add scsi-hd on
// the boot-time virtio-scsi controller "scsi<N>" (bus "scsi<N>.0",
// scsi-id 0, lun L), and device_del + DEVICE_DELETED + blockdev-del.
type QEMUHost struct {
	mon hotplug.Monitor
}

// NewQEMUHost returns a Host driving the VM behind mon.
func NewQEMUHost(mon hotplug.Monitor) *QEMUHost { return &QEMUHost{mon: mon} }

func nodeName(s Slot) string { return fmt.Sprintf("scsi%d-lun%d", s.Controller, s.LUN) }
func deviceID(s Slot) string { return fmt.Sprintf("scsidisk%d-%d", s.Controller, s.LUN) }

// AddDisk implements Host.
func (h *QEMUHost) AddDisk(ctx context.Context, slot Slot, hostPath string, format diskformat.Format, readOnly bool) error {
	node := nodeName(slot)
	blockdev, err := BlockdevArgs(node, hostPath, format, readOnly)
	if err != nil {
		return err
	}
	if err := h.mon.Execute(ctx, "blockdev-add", blockdev, nil); err != nil {
		return fmt.Errorf("blockdev-add %s: %w", hostPath, err)
	}
	dev := map[string]any{
		"driver": "scsi-hd", "id": deviceID(slot), "drive": node,
		"bus": fmt.Sprintf("scsi%d.0", slot.Controller), "scsi-id": 0, "lun": slot.LUN,
	}
	if err := h.mon.Execute(ctx, "device_add", dev, nil); err != nil {
		err = fmt.Errorf("device_add scsi-hd at %s: %w", slot, err)
		if derr := h.mon.Execute(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": node}, nil); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo blockdev-add: %w", derr))
		}
		return err
	}
	return nil
}

// RemoveDisk implements Host.
func (h *QEMUHost) RemoveDisk(ctx context.Context, slot Slot) error {
	if err := hotplug.Unplug(ctx, h.mon, deviceID(slot)); err != nil {
		return err
	}
	if err := h.mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": nodeName(slot)}, nil); err != nil {
		return fmt.Errorf("blockdev-del %s: %w", nodeName(slot), err)
	}
	return nil
}

// BlockdevArgs are the blockdev-add arguments for hostPath opened as
// format: the protocol node is "host_device" for a block device and "file"
// otherwise. The format is the one recorded for the disk, never read from
// its content (the guest may have written any header or footer into it).
// FormatVHDFixed is opened raw and limited to the data before its footer
// ("size" = file size − 512).
//
// Fixed VHDs do not go through QEMU's vpc driver: for footers whose
// creator it does not know it derives the size from the CHS geometry,
// which is smaller than the data (2 MiB reads as 2088960 bytes) and would
// cut the file system short; its force_size_calc option is not accepted by
// blockdev-add in QEMU 7.2.
func BlockdevArgs(node, hostPath string, format diskformat.Format, readOnly bool) (map[string]any, error) {
	fi, err := os.Stat(hostPath)
	if err != nil {
		return nil, err
	}
	protocol := "file"
	if fi.Mode()&os.ModeDevice != 0 {
		protocol = "host_device"
	}
	args := map[string]any{
		"node-name": node, "read-only": readOnly,
		"file": map[string]any{"driver": protocol, "filename": hostPath, "read-only": readOnly},
	}
	switch format {
	case diskformat.Raw:
		args["driver"] = "raw"
	case diskformat.VHDFixed:
		if !fi.Mode().IsRegular() || fi.Size() <= vhd.FooterSize {
			return nil, fmt.Errorf("%s: not a fixed VHD (a regular file larger than its %d-byte footer)", hostPath, vhd.FooterSize)
		}
		args["driver"], args["size"] = "raw", fi.Size()-vhd.FooterSize
	case diskformat.VHDDynamic:
		args["driver"] = "vpc"
	case diskformat.VHDX:
		args["driver"] = "vhdx"
	case diskformat.QCOW2:
		args["driver"] = "qcow2"
	default:
		return nil, fmt.Errorf("%s: unknown disk format %q", hostPath, format)
	}
	return args, nil
}
