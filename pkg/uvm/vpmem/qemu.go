package vpmem

import (
	"context"
	"errors"
	"fmt"

	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

// QEMUHost implements Host over QMP: object-add memory-backend-file (the
// layer file, read-only, private mapping) + device_add virtio-pmem-pci on a
// free PCIe root port, then query-memory-devices for the device's
// guest-physical address. The VM needs `-m SIZE,slots=N,maxmem=M`.
type QEMUHost struct {
	mon   hotplug.Monitor
	ports *pciports.Allocator
}

// NewQEMUHost returns a Host driving the VM behind mon, plugging onto ports
// (shared with the other hot-plug controllers of the VM).
func NewQEMUHost(mon hotplug.Monitor, ports *pciports.Allocator) *QEMUHost {
	return &QEMUHost{mon: mon, ports: ports}
}

func memID(slot int) string    { return fmt.Sprintf("pmemmem%d", slot) }
func deviceID(slot int) string { return fmt.Sprintf("pmem%d", slot) }

// AddPmem implements Host. Running out of root ports is ErrNoFreeSlot.
func (h *QEMUHost) AddPmem(ctx context.Context, slot int, hostPath string, size uint64) (addr uint64, err error) {
	port, err := h.ports.Allocate()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoFreeSlot, err)
	}
	mem := map[string]any{
		"qom-type": "memory-backend-file", "id": memID(slot), "mem-path": hostPath,
		"size": size, "share": false, "readonly": true,
	}
	if err := h.mon.Execute(ctx, "object-add", mem, nil); err != nil {
		_ = h.ports.Free(port)
		return 0, fmt.Errorf("object-add memory-backend-file %s: %w", hostPath, err)
	}
	dev := map[string]any{"driver": "virtio-pmem-pci", "id": deviceID(slot), "memdev": memID(slot), "bus": pciports.Name(port)}
	if err := h.mon.Execute(ctx, "device_add", dev, nil); err != nil {
		err = fmt.Errorf("device_add virtio-pmem-pci on %s: %w", pciports.Name(port), err)
		_ = h.ports.Free(port)
		if derr := h.mon.Execute(context.WithoutCancel(ctx), "object-del", map[string]any{"id": memID(slot)}, nil); derr != nil {
			// The backend stays; the slot's ids are taken for good.
			return 0, errors.Join(err, fmt.Errorf("%w: undo object-add: %w", ErrPlugged, derr))
		}
		return 0, err
	}
	// From here on the device cannot be unplugged: failures are ErrPlugged.
	addr, err = h.address(ctx, deviceID(slot))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrPlugged, err)
	}
	return addr, nil
}

type memoryDevice struct {
	Type string `json:"type"`
	Data struct {
		ID      string `json:"id"`
		Memaddr uint64 `json:"memaddr"`
		Size    uint64 `json:"size"`
	} `json:"data"`
}

func (h *QEMUHost) address(ctx context.Context, id string) (uint64, error) {
	var devs []memoryDevice
	if err := h.mon.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return 0, fmt.Errorf("query-memory-devices: %w", err)
	}
	for _, d := range devs {
		if d.Type == "virtio-pmem" && d.Data.ID == id {
			return d.Data.Memaddr, nil
		}
	}
	return 0, fmt.Errorf("query-memory-devices: device %s not listed", id)
}
