// Package hotplug holds the QMP steps shared by the SCSI, VPMEM and share
// controllers' QEMU adapters: the monitor interface they need and
// unplugging a device, which is only complete when QEMU reports
// DEVICE_DELETED (a PCI device needs the guest's cooperation first).
package hotplug

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Monitor is the part of a QMP client the adapters use.
type Monitor interface {
	// Execute runs cmd with args (nil for none) and decodes the return
	// value into result (nil to ignore it).
	Execute(ctx context.Context, cmd string, args, result any) error
	// WatchDeviceDeleted starts watching for the DEVICE_DELETED event of
	// device id. It must be called before device_del so that the event
	// cannot be missed. wait blocks until the event arrives, ctx ends or
	// the monitor is lost; stop releases the watch (safe after wait).
	WatchDeviceDeleted(id string) (wait func(ctx context.Context) error, stop func())
}

// UnplugTimeout bounds how long Unplug waits for DEVICE_DELETED when the
// caller's context has no deadline. A guest that never acknowledges a PCI
// unplug would otherwise block the release forever.
const UnplugTimeout = 30 * time.Second

// Unplug issues device_del for id and waits for its DEVICE_DELETED event.
func Unplug(ctx context.Context, mon Monitor, id string) error {
	wait, stop := mon.WatchDeviceDeleted(id)
	defer stop()
	if err := mon.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("device_del %s: %w", id, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, UnplugTimeout)
		defer cancel()
	}
	if err := wait(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("device %s: no DEVICE_DELETED event (the guest did not release it): %w", id, err)
		}
		return fmt.Errorf("device %s: waiting for DEVICE_DELETED: %w", id, err)
	}
	return nil
}
