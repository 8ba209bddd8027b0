package uvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

// AddNIC hot-plugs a virtio-net card with the given MAC onto a free root
// port, backed by tap, an open queue of a tap device (QEMU gets its own
// copy of the descriptor; the caller may close tap after). name tells
// cards apart (one word); the guest finds the card by its MAC.
func (u *UVM) AddNIC(ctx context.Context, name string, tap *os.File, mac net.HardwareAddr) (err error) {
	u.mu.Lock()
	ports, mon := u.ports, u.qmp
	u.mu.Unlock()
	if ports == nil || mon == nil {
		return fmt.Errorf("uvm %s: add network card %s: not running", u.cfg.ID, name)
	}
	port, err := ports.Allocate()
	if err != nil {
		return fmt.Errorf("uvm %s: add network card %s: %w", u.cfg.ID, name, err)
	}
	fdName, netdev, dev := "fd-"+name, "netdev-"+name, "nic-"+name
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			ports.Free(port)
		}
	}()
	cleanCtx := context.WithoutCancel(ctx)
	if err := mon.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": fdName}, nil, tap); err != nil {
		return fmt.Errorf("uvm %s: pass the tap of %s to QEMU: %w", u.cfg.ID, name, err)
	}
	undo = append(undo, func() { mon.Execute(cleanCtx, "closefd", map[string]any{"fdname": fdName}, nil) })
	if err := mon.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": netdev, "fd": fdName}, nil); err != nil {
		return fmt.Errorf("uvm %s: netdev_add %s: %w", u.cfg.ID, netdev, err)
	}
	undo = append(undo, func() { mon.Execute(cleanCtx, "netdev_del", map[string]any{"id": netdev}, nil) })
	if err := mon.Execute(ctx, "device_add", map[string]any{"driver": "virtio-net-pci", "id": dev, "netdev": netdev,
		"mac": mac.String(), "bus": pciports.Name(port)}, nil); err != nil {
		return fmt.Errorf("uvm %s: device_add virtio-net-pci on %s: %w", u.cfg.ID, pciports.Name(port), err)
	}
	u.mu.Lock()
	if u.nics == nil {
		u.nics = map[string]int{}
	}
	u.nics[name] = port
	u.mu.Unlock()
	return nil
}

// RemoveNIC unplugs a card AddNIC plugged (the guest must release it).
func (u *UVM) RemoveNIC(ctx context.Context, name string) error {
	u.mu.Lock()
	port, ok := u.nics[name]
	delete(u.nics, name)
	ports, mon := u.ports, u.qmp
	u.mu.Unlock()
	if !ok {
		return fmt.Errorf("uvm %s: network card %s: not added", u.cfg.ID, name)
	}
	if err := hotplug.Unplug(ctx, mon, "nic-"+name); err != nil {
		return fmt.Errorf("uvm %s: remove network card %s: %w", u.cfg.ID, name, err)
	}
	return errors.Join(mon.Execute(ctx, "netdev_del", map[string]any{"id": "netdev-" + name}, nil), ports.Free(port))
}
