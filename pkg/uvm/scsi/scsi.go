// Package scsi attaches disk images (and host block devices) to a utility
// VM's virtio-scsi controllers and mounts them in the guest, reference-counted
// by host path.
//
// The Controller is a thin layer over internal/refcount, which owns the
// reference counts, the in-flight transitions and the retryable release; it
// adds slot allocation and the calls to two interfaces it defines: Host
// (what the VMM must do: hot-add and hot-remove a disk at a slot) and Guest
// (what the guest agent must do: mount and unmount it).
//
//   - Slots are controller×LUN (64 LUNs per controller), lowest free first.
//   - Attaching the same host path again with identical Options adds a
//     reference; different Options for a path already attached is ErrConflict.
//   - The disk's Format is given, never probed: the guest can write a VHD
//     footer or a VHDX header into a writable disk.
//   - Guest mount paths come from a counter: guestpath.SCSIMount(N).
//   - A failed guest mount detaches the disk again. The last Release
//     unmounts in the guest, then hot-removes the disk; when a step fails the
//     reference is kept and a later Release retries from that step (a disk
//     the guest still has mounted is never removed under it).
package scsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/refcount"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/diskformat"
)

// LUNsPerController is how many disks one virtio-scsi controller takes here.
const LUNsPerController = 64

var (
	// ErrNoFreeSlot means every controller×LUN slot is taken.
	ErrNoFreeSlot = errors.New("no free SCSI slot")
	// ErrConflict means the host path is already attached with other options.
	ErrConflict = refcount.ErrConflict
	// ErrAlreadyReleased means Release was called again after it succeeded.
	ErrAlreadyReleased = refcount.ErrAlreadyReleased
)

// Slot is a place on the VM's SCSI buses.
type Slot struct {
	Controller int // index of the virtio-scsi controller ("scsi<N>")
	LUN        int
}

func (s Slot) String() string { return fmt.Sprintf("%d:%d", s.Controller, s.LUN) }

// Format is how the host opens a disk file (diskformat.Format). It is
// recorded when the disk is created or registered and passed explicitly:
// the host never decides it from the disk's content, which the guest may
// have written.
//
// Deprecated: the name is kept for pkg/layers; use diskformat.Format.
type Format = diskformat.Format

// The formats pkg/layers names.
//
// Deprecated: use diskformat.Raw, VHDFixed and VHDX.
const (
	FormatRaw      = diskformat.Raw
	FormatVHDFixed = diskformat.VHDFixed
	FormatVHDX     = diskformat.VHDX
)

// Options says how a disk is attached. Two attaches of one path share the
// disk only when their Options are equal.
type Options struct {
	// Format of the disk file; required.
	Format   diskformat.Format
	ReadOnly bool
	// Partition to mount, 1-based; 0 mounts the whole disk.
	Partition int
	// MountInGuest mounts the disk at a fresh guest path; without it the
	// disk is only attached (e.g. a physical disk passed through).
	MountInGuest bool
	// FSType of the guest mount; "" lets the guest decide (ext4).
	FSType string
}

// Host is what the VMM side must do.
type Host interface {
	// AddDisk hot-adds hostPath, opened as format, at slot. On failure it
	// leaves nothing added.
	AddDisk(ctx context.Context, slot Slot, hostPath string, format diskformat.Format, readOnly bool) error
	// RemoveDisk hot-removes the disk at slot and returns once it is gone.
	RemoveDisk(ctx context.Context, slot Slot) error
}

// Guest is what the guest agent must do.
type Guest interface {
	MountSCSI(ctx context.Context, slot Slot, partition int, readOnly bool, fsType, guestPath string) error
	Unmount(ctx context.Context, guestPath string) error
}

// disk is the table's value for an attached host path.
type disk struct {
	hostPath  string // resolved
	opts      Options
	slot      Slot
	guestPath string
}

// Controller manages the SCSI disks of one VM. Safe for concurrent use.
type Controller struct {
	host  Host
	guest Guest
	disks *refcount.Table[string, Options, disk]

	mu sync.Mutex
	// slots are taken from reservation until the disk is removed; a slot
	// whose disk could not be removed while undoing a failed attach stays
	// taken for good (the disk may still be there).
	slots     [][]bool // [controller][lun]
	nextMount int
}

// New returns a controller for a VM with the given number of virtio-scsi
// controllers (1 to 4 in practice).
func New(host Host, guest Guest, controllers int) (*Controller, error) {
	if controllers < 1 {
		return nil, fmt.Errorf("scsi: need at least one controller, got %d", controllers)
	}
	c := &Controller{host: host, guest: guest}
	c.slots = make([][]bool, controllers)
	for i := range c.slots {
		c.slots[i] = make([]bool, LUNsPerController)
	}
	c.disks = refcount.New(refcount.Hooks[string, Options, disk]{
		Attach: c.attach, Mount: c.mount, Unmount: c.unmount, Remove: c.remove,
	})
	return c, nil
}

// Mount is one reference to an attached disk. Release it until Release
// succeeds.
type Mount struct {
	r *refcount.Ref[string, Options, disk]
}

// GuestPath is where the disk is mounted in the guest ("" without MountInGuest).
func (m *Mount) GuestPath() string { return m.r.Value().guestPath }

// Slot is where the disk sits on the VM's SCSI buses.
func (m *Mount) Slot() Slot { return m.r.Value().slot }

// HostPath is the attached file with symlinks resolved.
func (m *Mount) HostPath() string { return m.r.Key() }

// Options are the options the disk was attached with.
func (m *Mount) Options() Options { return m.r.Options() }

// Attach attaches hostPath (a disk image or block device) with opts, or adds
// a reference when it is already attached with the same opts.
func (c *Controller) Attach(ctx context.Context, hostPath string, opts Options) (*Mount, error) {
	if opts.Partition < 0 {
		return nil, fmt.Errorf("scsi attach %s: invalid partition %d", hostPath, opts.Partition)
	}
	if !opts.Format.Attachable() {
		return nil, fmt.Errorf("scsi attach %s: unknown disk format %q", hostPath, opts.Format)
	}
	resolved, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("scsi attach: %w", err)
	}
	r, err := c.disks.Attach(ctx, resolved, opts)
	if err != nil {
		return nil, fmt.Errorf("scsi attach %s: %w", hostPath, err)
	}
	return &Mount{r: r}, nil
}

// attach is the table's Attach hook: reserve a slot, hot-add, mount.
func (c *Controller) attach(ctx context.Context, hostPath string, opts Options) (_ disk, err error) {
	c.mu.Lock()
	slot, ok := c.freeSlot()
	if !ok {
		c.mu.Unlock()
		return disk{}, fmt.Errorf("%w (%d controllers × %d LUNs in use)", ErrNoFreeSlot, len(c.slots), LUNsPerController)
	}
	c.slots[slot.Controller][slot.LUN] = true
	d := disk{hostPath: hostPath, opts: opts, slot: slot}
	if opts.MountInGuest {
		d.guestPath = guestpath.SCSIMount(c.nextMount)
		c.nextMount++
	}
	c.mu.Unlock()

	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	retired := false // the disk may still be in the slot: keep it taken
	u.Push("free slot "+slot.String(), func(context.Context) error {
		if !retired {
			c.free(slot)
		}
		return nil
	})
	if err := c.host.AddDisk(ctx, slot, hostPath, opts.Format, opts.ReadOnly); err != nil {
		return disk{}, fmt.Errorf("add at %s: %w", slot, err)
	}
	u.Push("remove disk "+slot.String(), func(ctx context.Context) error {
		if err := c.host.RemoveDisk(ctx, slot); err != nil {
			retired = true
			return err
		}
		return nil
	})
	if _, err := c.mount(ctx, hostPath, d); err != nil {
		return disk{}, err
	}
	u.Commit()
	slog.Debug("scsi attached", "path", hostPath, "slot", slot, "guest", d.guestPath)
	return d, nil
}

// mount is the guest step of attach, and the table's Mount hook after a
// release that unmounted but could not remove: the same path again.
func (c *Controller) mount(ctx context.Context, _ string, d disk) (disk, error) {
	if d.guestPath == "" {
		return d, nil
	}
	if err := c.guest.MountSCSI(ctx, d.slot, d.opts.Partition, d.opts.ReadOnly, d.opts.FSType, d.guestPath); err != nil {
		return disk{}, fmt.Errorf("mount at %s in the guest: %w", d.guestPath, err)
	}
	return d, nil
}

func (c *Controller) unmount(ctx context.Context, _ string, d disk) error {
	if d.guestPath == "" {
		return nil
	}
	if err := c.guest.Unmount(ctx, d.guestPath); err != nil {
		return fmt.Errorf("unmount %s in the guest: %w", d.guestPath, err)
	}
	return nil
}

func (c *Controller) remove(ctx context.Context, hostPath string, d disk) error {
	if err := c.host.RemoveDisk(ctx, d.slot); err != nil {
		return fmt.Errorf("remove disk at %s: %w", d.slot, err)
	}
	c.free(d.slot)
	slog.Debug("scsi detached", "path", hostPath, "slot", d.slot)
	return nil
}

func (c *Controller) free(s Slot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slots[s.Controller][s.LUN] = false
}

// Release drops this reference. The last one unmounts the disk in the guest,
// then hot-removes it. When a step fails the reference is kept (the disk
// stays attached, and mounted if the unmount failed) and the error is
// returned; calling Release again retries from the failed step.
func (m *Mount) Release(ctx context.Context) error {
	if err := m.r.Release(ctx); err != nil {
		return fmt.Errorf("scsi release %s: %w", m.r.Key(), err)
	}
	return nil
}

// RefCount reports how many references hostPath has (0 when not attached).
func (c *Controller) RefCount(hostPath string) int {
	resolved, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	return c.disks.RefCount(resolved)
}

// Attached reports how many slots are taken (attached disks, disks in
// transition, and slots lost to a failed removal).
func (c *Controller) Attached() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, luns := range c.slots {
		for _, taken := range luns {
			if taken {
				n++
			}
		}
	}
	return n
}

func (c *Controller) freeSlot() (Slot, bool) {
	for ctl, luns := range c.slots {
		for lun, taken := range luns {
			if !taken {
				return Slot{Controller: ctl, LUN: lun}, true
			}
		}
	}
	return Slot{}, false
}

// resolve is hostpath.Resolve for a disk: anything but a directory (an
// image file or a block device).
func resolve(hostPath string) (string, error) {
	resolved, fi, err := hostpath.Resolve(hostPath)
	if err != nil {
		return "", err
	}
	if fi.IsDir() {
		return "", fmt.Errorf("host path %q is a directory, not a disk", hostPath)
	}
	return resolved, nil
}
