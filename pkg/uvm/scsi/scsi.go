// Package scsi attaches disk images (and host block devices) to a utility
// VM's virtio-scsi controllers and mounts them in the guest, reference-counted
// by host path.
//
// The Controller is a small state machine over two interfaces it defines:
// Host (what the VMM must do: hot-add and hot-remove a disk at a slot) and
// Guest (what the guest agent must do: mount and unmount it). A disk moves
// through attaching → attached → detaching; concurrent callers for the same
// path wait for an in-flight transition instead of racing it.
//
//   - Slots are controller×LUN (64 LUNs per controller), lowest free first.
//   - Attaching the same host path again with identical Options adds a
//     reference; different Options for a path already attached is ErrConflict.
//   - Guest mount paths come from a counter: /run/mounts/scsi/m<N>.
//   - A failed guest mount detaches the disk again; the last Release unmounts
//     in the guest and hot-removes the disk.
package scsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/inflight"
	"github.com/layervisor/layervisor/pkg/undo"
)

// LUNsPerController is how many disks one virtio-scsi controller takes here.
const LUNsPerController = 64

// GuestMountRoot is the guest directory under which disks are mounted.
const GuestMountRoot = "/run/mounts/scsi"

var (
	// ErrNoFreeSlot means every controller×LUN slot is taken.
	ErrNoFreeSlot = errors.New("no free SCSI slot")
	// ErrConflict means the host path is already attached with other options.
	ErrConflict = errors.New("already attached with a different configuration")
	// ErrAlreadyReleased means Release was called twice on one Mount.
	ErrAlreadyReleased = errors.New("SCSI mount already released")
)

// Slot is a place on the VM's SCSI buses.
type Slot struct {
	Controller int // index of the virtio-scsi controller ("scsi<N>")
	LUN        int
}

func (s Slot) String() string { return fmt.Sprintf("%d:%d", s.Controller, s.LUN) }

// Options says how a disk is attached. Two attaches of one path share the
// disk only when their Options are equal.
type Options struct {
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
	// AddDisk hot-adds hostPath at slot. On failure it leaves nothing added.
	AddDisk(ctx context.Context, slot Slot, hostPath string, readOnly bool) error
	// RemoveDisk hot-removes the disk at slot and returns once it is gone.
	RemoveDisk(ctx context.Context, slot Slot) error
}

// Guest is what the guest agent must do.
type Guest interface {
	MountSCSI(ctx context.Context, slot Slot, partition int, readOnly bool, fsType, guestPath string) error
	Unmount(ctx context.Context, guestPath string) error
}

type state int

const (
	attaching state = iota
	attached
	detaching
)

type disk struct {
	hostPath  string // resolved
	opts      Options
	slot      Slot
	guestPath string
	refs      int
	state     state
	op        *inflight.Op // the transition in flight (or the last one)
	// unsafe is set when removing the disk failed: the slot may still hold
	// it, so it is never handed out again.
	unsafe bool
}

// Controller manages the SCSI disks of one VM. Safe for concurrent use.
type Controller struct {
	host  Host
	guest Guest

	mu        sync.Mutex
	slots     [][]*disk // [controller][lun]; nil = free
	byPath    map[string]*disk
	nextMount int
}

// New returns a controller for a VM with the given number of virtio-scsi
// controllers (1 to 4 in practice).
func New(host Host, guest Guest, controllers int) (*Controller, error) {
	if controllers < 1 {
		return nil, fmt.Errorf("scsi: need at least one controller, got %d", controllers)
	}
	c := &Controller{host: host, guest: guest, byPath: map[string]*disk{}}
	c.slots = make([][]*disk, controllers)
	for i := range c.slots {
		c.slots[i] = make([]*disk, LUNsPerController)
	}
	return c, nil
}

// Mount is one reference to an attached disk. Release it exactly once.
type Mount struct {
	c        *Controller
	d        *disk
	released atomic.Bool
}

// GuestPath is where the disk is mounted in the guest ("" without MountInGuest).
func (m *Mount) GuestPath() string { return m.d.guestPath }

// Slot is where the disk sits on the VM's SCSI buses.
func (m *Mount) Slot() Slot { return m.d.slot }

// HostPath is the attached file with symlinks resolved.
func (m *Mount) HostPath() string { return m.d.hostPath }

// Options are the options the disk was attached with.
func (m *Mount) Options() Options { return m.d.opts }

// Attach attaches hostPath (a disk image or block device) with opts, or adds
// a reference when it is already attached with the same opts.
func (c *Controller) Attach(ctx context.Context, hostPath string, opts Options) (*Mount, error) {
	if opts.Partition < 0 {
		return nil, fmt.Errorf("scsi attach %s: invalid partition %d", hostPath, opts.Partition)
	}
	resolved, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("scsi attach: %w", err)
	}
	c.mu.Lock()
	for {
		d := c.byPath[resolved]
		if d == nil {
			break
		}
		if d.state != detaching && d.opts != opts {
			c.mu.Unlock()
			return nil, fmt.Errorf("scsi attach %s with %+v: %w (attached at %s with %+v)",
				hostPath, opts, ErrConflict, d.slot, d.opts)
		}
		if d.state == attached {
			d.refs++
			c.mu.Unlock()
			return &Mount{c: c, d: d}, nil
		}
		// Wait for the in-flight attach or detach, then look again.
		o, wasAttaching := d.op, d.state == attaching
		c.mu.Unlock()
		if err := o.Wait(ctx); err != nil {
			return nil, fmt.Errorf("scsi attach %s: %w", hostPath, err)
		}
		if wasAttaching && o.Err() != nil {
			// Every caller waiting on a failed attach gets its error.
			return nil, fmt.Errorf("scsi attach %s: concurrent attach failed: %w", hostPath, o.Err())
		}
		c.mu.Lock()
	}
	slot, ok := c.freeSlot()
	if !ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("scsi attach %s: %w (%d controllers × %d LUNs in use)",
			hostPath, ErrNoFreeSlot, len(c.slots), LUNsPerController)
	}
	d := &disk{hostPath: resolved, opts: opts, slot: slot, refs: 1, state: attaching,
		op: inflight.New()}
	if opts.MountInGuest {
		d.guestPath = fmt.Sprintf("%s/m%d", GuestMountRoot, c.nextMount)
		c.nextMount++
	}
	c.slots[slot.Controller][slot.LUN] = d
	c.byPath[resolved] = d
	c.mu.Unlock()

	err = c.attach(ctx, d)

	c.mu.Lock()
	if err != nil {
		delete(c.byPath, resolved)
		if !d.unsafe {
			c.slots[slot.Controller][slot.LUN] = nil
		}
	} else {
		d.state = attached
	}
	d.op.Finish(err)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	slog.Debug("scsi attached", "path", resolved, "slot", slot, "guest", d.guestPath)
	return &Mount{c: c, d: d}, nil
}

func (c *Controller) attach(ctx context.Context, d *disk) (err error) {
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	if err := c.host.AddDisk(ctx, d.slot, d.hostPath, d.opts.ReadOnly); err != nil {
		return fmt.Errorf("scsi attach %s at %s: %w", d.hostPath, d.slot, err)
	}
	u.Push("remove disk "+d.slot.String(), func(ctx context.Context) error {
		if err := c.host.RemoveDisk(ctx, d.slot); err != nil {
			d.unsafe = true
			return err
		}
		return nil
	})
	if d.opts.MountInGuest {
		if err := c.guest.MountSCSI(ctx, d.slot, d.opts.Partition, d.opts.ReadOnly, d.opts.FSType, d.guestPath); err != nil {
			return fmt.Errorf("scsi attach %s: mount at %s in the guest: %w", d.hostPath, d.guestPath, err)
		}
	}
	u.Commit()
	return nil
}

// Release drops this reference. The last one unmounts the disk in the guest
// and hot-removes it; both are attempted and their errors joined. When the
// removal fails the slot is never reused (the disk may still be there).
func (m *Mount) Release(ctx context.Context) error {
	if !m.released.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: %w", m.d.hostPath, ErrAlreadyReleased)
	}
	c, d := m.c, m.d
	c.mu.Lock()
	d.refs--
	if d.refs > 0 {
		c.mu.Unlock()
		return nil
	}
	d.state = detaching
	d.op = inflight.New()
	c.mu.Unlock()

	var errs []error
	if d.guestPath != "" {
		if err := c.guest.Unmount(ctx, d.guestPath); err != nil {
			errs = append(errs, fmt.Errorf("scsi release %s: unmount %s in the guest: %w", d.hostPath, d.guestPath, err))
		}
	}
	removeErr := c.host.RemoveDisk(ctx, d.slot)
	if removeErr != nil {
		errs = append(errs, fmt.Errorf("scsi release %s: remove disk at %s: %w", d.hostPath, d.slot, removeErr))
	}
	err := errors.Join(errs...)

	c.mu.Lock()
	if c.byPath[d.hostPath] == d {
		delete(c.byPath, d.hostPath)
	}
	if removeErr == nil {
		c.slots[d.slot.Controller][d.slot.LUN] = nil
	} else {
		d.unsafe = true
	}
	d.op.Finish(err)
	c.mu.Unlock()
	if err == nil {
		slog.Debug("scsi detached", "path", d.hostPath, "slot", d.slot)
	}
	return err
}

// RefCount reports how many references hostPath has (0 when not attached).
func (c *Controller) RefCount(hostPath string) int {
	resolved, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.byPath[resolved]; d != nil && d.state == attached {
		return d.refs
	}
	return 0
}

// Attached reports how many disks are attached (slots in use, including
// slots lost to a failed removal).
func (c *Controller) Attached() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, luns := range c.slots {
		for _, d := range luns {
			if d != nil {
				n++
			}
		}
	}
	return n
}

func (c *Controller) freeSlot() (Slot, bool) {
	for ctl, luns := range c.slots {
		for lun, d := range luns {
			if d == nil {
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
