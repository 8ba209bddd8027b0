// Package vpmem maps read-only layer images into a utility VM as virtio-pmem
// devices and mounts them in the guest, reference-counted by host path.
//
// QEMU cannot unplug virtio-pmem, so a slot, once bound to a layer, stays
// bound until the VM stops: at ref-count zero the guest unmounts the device
// and the slot waits, idle, to be mounted again for the same layer only.
// The reference counts, in-flight transitions and retryable release are
// internal/refcount's (a table without a Remove step): a failed guest
// unmount keeps the reference, and Release again retries it.
//
// What is mapped: the image's data without its VHD footer. A layer.vhd is
// an ext4 image followed by a 512-byte fixed-VHD footer; QEMU's
// memory-backend-file refuses a size larger than the file and maps whole
// pages, so the mapped size is the data size, which must be a non-zero
// multiple of Config.Align (4 KiB by default; ext4 images made by the
// project are multiples of their 4 KiB block size). An image that cannot be
// mapped exactly is refused with ErrUnmappable, which also matches
// ErrTooLarge so callers fall back to SCSI for it.
package vpmem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/refcount"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// Defaults in the spirit of hcsshim.
const (
	DefaultSlots   = 64
	DefaultMaxSize = 4 << 30
	DefaultAlign   = 4096
)

var (
	// ErrNoFreeSlot means every VPMEM slot is bound, or the memory left
	// for pmem (maxmem − RAM) cannot hold the layer. Callers fall back to SCSI.
	ErrNoFreeSlot = errors.New("no free VPMEM slot")
	// ErrTooLarge means the layer can never be a VPMEM device of this VM.
	// Callers fall back to SCSI.
	ErrTooLarge = errors.New("layer too large for VPMEM")
	// ErrUnmappable means the image's data size is not a multiple of the
	// alignment, so it cannot be mapped exactly. It matches ErrTooLarge.
	ErrUnmappable = fmt.Errorf("%w: data size cannot be mapped exactly", ErrTooLarge)
	// ErrPlugged is wrapped by a Host whose AddPmem failed after the
	// device was plugged: the slot cannot be used again.
	ErrPlugged = errors.New("pmem device plugged but not usable")
	// ErrAlreadyReleased means Release was called again after it succeeded.
	ErrAlreadyReleased = refcount.ErrAlreadyReleased
)

// Config bounds the controller.
type Config struct {
	Slots   int    // devices; 0 = DefaultSlots
	MaxSize uint64 // per device; 0 = DefaultMaxSize
	// Budget is the guest-physical space for pmem: maxmem − RAM. 0 = no limit.
	Budget uint64
	Align  uint64 // 0 = DefaultAlign
}

// Device is a plugged pmem device as the guest needs to find it.
type Device struct {
	Slot int
	Addr uint64 // guest-physical start of its memory region
	Size uint64
}

// Host is what the VMM side must do.
type Host interface {
	// AddPmem maps the first size bytes of hostPath, read-only, as pmem
	// device slot and returns its guest-physical address. On failure it
	// leaves nothing added, or wraps ErrPlugged when it cannot.
	AddPmem(ctx context.Context, slot int, hostPath string, size uint64) (addr uint64, err error)
}

// Guest is what the guest agent must do.
type Guest interface {
	MountPmem(ctx context.Context, dev Device, guestPath string) error
	Unmount(ctx context.Context, guestPath string) error
}

// mapping is the table's value for a mounted (or idle) layer.
type mapping struct {
	dev       Device
	guestPath string
}

// Controller manages the VPMEM devices of one VM. Safe for concurrent use.
type Controller struct {
	host   Host
	guest  Guest
	cfg    Config
	layers *refcount.Table[string, struct{}, mapping]

	mu        sync.Mutex
	slots     []bool            // bound (or lost); never freed once plugged
	bound     map[string]Device // plugged devices by resolved host path
	used      uint64            // budget taken by plugged (or plugging) devices
	nextMount int
}

// New returns a controller; zero Config fields take the defaults.
func New(host Host, guest Guest, cfg Config) *Controller {
	if cfg.Slots <= 0 {
		cfg.Slots = DefaultSlots
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.Align == 0 {
		cfg.Align = DefaultAlign
	}
	c := &Controller{host: host, guest: guest, cfg: cfg,
		slots: make([]bool, cfg.Slots), bound: map[string]Device{}}
	c.layers = refcount.New(refcount.Hooks[string, struct{}, mapping]{
		Attach: c.attach, Mount: c.remount, Unmount: c.unmount,
		// No Remove: pmem cannot be unplugged; the entry stays idle.
	})
	return c
}

// Config is the effective configuration.
func (c *Controller) Config() Config { return c.cfg }

// Mount is one reference to a mounted pmem device. Release it until
// Release succeeds.
type Mount struct {
	r *refcount.Ref[string, struct{}, mapping]
}

// GuestPath is where the layer is mounted in the guest.
func (m *Mount) GuestPath() string { return m.r.Value().guestPath }

// Device is the pmem device holding the layer.
func (m *Mount) Device() Device { return m.r.Value().dev }

// HostPath is the mapped file with symlinks resolved.
func (m *Mount) HostPath() string { return m.r.Key() }

// Attach maps the layer image at hostPath (or reuses the slot already bound
// to it) and mounts it read-only in the guest. ErrNoFreeSlot and
// ErrTooLarge (wrapped) tell the caller to use SCSI instead.
func (c *Controller) Attach(ctx context.Context, hostPath string) (*Mount, error) {
	resolved, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("vpmem attach: %w", err)
	}
	r, err := c.layers.Attach(ctx, resolved, struct{}{})
	if err != nil {
		return nil, fmt.Errorf("vpmem attach %s: %w", hostPath, err)
	}
	return &Mount{r: r}, nil
}

// attach is the table's Attach hook: bind a slot to the layer (unless a
// failed mount left one bound) and mount it.
func (c *Controller) attach(ctx context.Context, hostPath string, _ struct{}) (mapping, error) {
	c.mu.Lock()
	dev, ok := c.bound[hostPath]
	c.mu.Unlock()
	if !ok {
		var err error
		if dev, err = c.plug(ctx, hostPath); err != nil {
			return mapping{}, err
		}
	}
	return c.remount(ctx, hostPath, mapping{dev: dev})
}

// plug sizes the layer, reserves a slot and its budget, and adds the device.
func (c *Controller) plug(ctx context.Context, hostPath string) (Device, error) {
	size, err := MappedSize(hostPath, c.cfg.Align)
	if err != nil {
		return Device{}, err
	}
	if limit := c.limit(); size > limit {
		return Device{}, fmt.Errorf("%w (%d bytes, limit %d)", ErrTooLarge, size, limit)
	}
	c.mu.Lock()
	slot := c.freeSlot()
	if slot < 0 {
		c.mu.Unlock()
		return Device{}, fmt.Errorf("%w (all %d bound)", ErrNoFreeSlot, len(c.slots))
	}
	if c.cfg.Budget != 0 && c.used+size > c.cfg.Budget {
		c.mu.Unlock()
		return Device{}, fmt.Errorf("%w (%d bytes needed, %d of %d left)",
			ErrNoFreeSlot, size, c.cfg.Budget-c.used, c.cfg.Budget)
	}
	c.slots[slot] = true
	c.used += size
	c.mu.Unlock()

	addr, err := c.host.AddPmem(ctx, slot, hostPath, size)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrPlugged) {
			c.slots[slot] = false
			c.used -= size
		} // else the slot and its memory are lost until the VM stops
		return Device{}, fmt.Errorf("add device %d: %w", slot, err)
	}
	dev := Device{Slot: slot, Addr: addr, Size: size}
	c.bound[hostPath] = dev
	return dev, nil
}

// remount mounts a bound device at a fresh guest path: the guest step of
// attach, and the table's Mount hook for an idle layer. A failure leaves
// the device bound and idle: it cannot be unplugged.
func (c *Controller) remount(ctx context.Context, hostPath string, m mapping) (mapping, error) {
	c.mu.Lock()
	m.guestPath = guestpath.PmemMount(c.nextMount)
	c.nextMount++
	c.mu.Unlock()
	if err := c.guest.MountPmem(ctx, m.dev, m.guestPath); err != nil {
		return mapping{}, fmt.Errorf("mount device %d at %s in the guest: %w", m.dev.Slot, m.guestPath, err)
	}
	slog.Debug("vpmem mounted", "path", hostPath, "slot", m.dev.Slot, "guest", m.guestPath)
	return m, nil
}

func (c *Controller) unmount(ctx context.Context, _ string, m mapping) error {
	if err := c.guest.Unmount(ctx, m.guestPath); err != nil {
		return fmt.Errorf("unmount %s in the guest: %w", m.guestPath, err)
	}
	return nil
}

// Release drops this reference; the last one unmounts the layer in the
// guest and the device stays bound to the layer for a later Attach. When
// the unmount fails the reference is kept and the error returned; calling
// Release again retries it.
func (m *Mount) Release(ctx context.Context) error {
	if err := m.r.Release(ctx); err != nil {
		return fmt.Errorf("vpmem release %s: %w", m.r.Key(), err)
	}
	return nil
}

// RefCount reports how many references the layer at hostPath has.
func (c *Controller) RefCount(hostPath string) int {
	resolved, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	return c.layers.RefCount(resolved)
}

// Bound reports how many slots are bound (or lost) and how many bytes of the
// budget they take.
func (c *Controller) Bound() (slots int, bytes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.slots {
		if b {
			slots++
		}
	}
	return slots, c.used
}

func (c *Controller) limit() uint64 {
	if c.cfg.Budget != 0 && c.cfg.Budget < c.cfg.MaxSize {
		return c.cfg.Budget
	}
	return c.cfg.MaxSize
}

func (c *Controller) freeSlot() int {
	for i, b := range c.slots {
		if !b {
			return i
		}
	}
	return -1
}

// MappedSize is how many bytes of the image at path are mapped: its size
// without a trailing VHD footer. It must be a non-zero multiple of align.
func MappedSize(path string, align uint64) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := uint64(fi.Size())
	if size >= vhd.FooterSize {
		buf := make([]byte, vhd.FooterSize)
		if _, err := f.ReadAt(buf, int64(size-vhd.FooterSize)); err != nil && err != io.EOF {
			return 0, fmt.Errorf("%s: read footer: %w", path, err)
		}
		ft, ferr := vhd.ParseFooter(buf)
		switch {
		case ferr == nil && ft.DiskType != vhd.DiskTypeFixed:
			return 0, fmt.Errorf("%s: %w (VHD disk type %d is not fixed)", path, ErrUnmappable, ft.DiskType)
		case ferr == nil:
			size -= vhd.FooterSize
		case !errors.Is(ferr, vhd.ErrNoFooter):
			return 0, fmt.Errorf("%s: %w", path, ferr)
		}
	}
	if size == 0 || size%align != 0 {
		return 0, fmt.Errorf("%s: %w (%d data bytes, not a non-zero multiple of %d)", path, ErrUnmappable, size, align)
	}
	return size, nil
}

// resolve is hostpath.Resolve for a layer image: a regular file, which
// QEMU's memory-backend-file can map.
func resolve(hostPath string) (string, error) {
	resolved, fi, err := hostpath.Resolve(hostPath)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("host path %q is not a regular file", hostPath)
	}
	return resolved, nil
}
