// Package vpmem maps read-only layer images into a utility VM as virtio-pmem
// devices and mounts them in the guest, reference-counted by host path.
//
// QEMU cannot unplug virtio-pmem, so a slot, once bound to a layer, stays
// bound until the VM stops: at ref-count zero the guest unmounts the device
// and the slot waits, idle, to be mounted again for the same layer only.
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
	"sync/atomic"

	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/inflight"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// Defaults in the spirit of hcsshim.
const (
	DefaultSlots   = 64
	DefaultMaxSize = 4 << 30
	DefaultAlign   = 4096
)

// GuestMountRoot is the guest directory under which devices are mounted.
const GuestMountRoot = "/run/mounts/pmem"

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
	// ErrAlreadyReleased means Release was called twice on one Mount.
	ErrAlreadyReleased = errors.New("VPMEM mount already released")
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

type state int

const (
	adding     state = iota // host add + guest mount in flight
	mounting                // guest mount of a bound, idle device in flight
	mounted                 // refs > 0
	unmounting              // guest unmount in flight
	idle                    // bound to its layer, not mounted
)

type device struct {
	hostPath  string
	dev       Device
	guestPath string
	refs      int
	state     state
	op        *inflight.Op // the transition in flight (or the last one)
}

// Controller manages the VPMEM devices of one VM. Safe for concurrent use.
type Controller struct {
	host  Host
	guest Guest
	cfg   Config

	mu        sync.Mutex
	slots     []*device // nil = free; never freed once plugged
	byPath    map[string]*device
	used      uint64 // budget taken by plugged (or plugging) devices
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
	return &Controller{host: host, guest: guest, cfg: cfg,
		slots: make([]*device, cfg.Slots), byPath: map[string]*device{}}
}

// Config is the effective configuration.
func (c *Controller) Config() Config { return c.cfg }

// Mount is one reference to a mounted pmem device. Release it exactly once.
type Mount struct {
	c         *Controller
	d         *device
	guestPath string
	released  atomic.Bool
}

// GuestPath is where the layer is mounted in the guest.
func (m *Mount) GuestPath() string { return m.guestPath }

// Device is the pmem device holding the layer.
func (m *Mount) Device() Device { return m.d.dev }

// HostPath is the mapped file with symlinks resolved.
func (m *Mount) HostPath() string { return m.d.hostPath }

// Attach maps the layer image at hostPath (or reuses the slot already bound
// to it) and mounts it read-only in the guest. ErrNoFreeSlot and
// ErrTooLarge (wrapped) tell the caller to use SCSI instead.
func (c *Controller) Attach(ctx context.Context, hostPath string) (*Mount, error) {
	resolved, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("vpmem attach: %w", err)
	}
	c.mu.Lock()
	for {
		d := c.byPath[resolved]
		if d == nil {
			break
		}
		switch d.state {
		case mounted:
			d.refs++
			gp := d.guestPath
			c.mu.Unlock()
			return &Mount{c: c, d: d, guestPath: gp}, nil
		case idle:
			return c.remount(ctx, d) // unlocks
		}
		o, wasMounting := d.op, d.state != unmounting
		c.mu.Unlock()
		if err := o.Wait(ctx); err != nil {
			return nil, fmt.Errorf("vpmem attach %s: %w", hostPath, err)
		}
		if wasMounting && o.Err() != nil {
			return nil, fmt.Errorf("vpmem attach %s: concurrent attach failed: %w", hostPath, o.Err())
		}
		c.mu.Lock()
	}
	c.mu.Unlock()

	// A new device: size it outside the lock (file I/O), then reserve.
	size, err := MappedSize(resolved, c.cfg.Align)
	if err != nil {
		return nil, fmt.Errorf("vpmem attach: %w", err)
	}
	if limit := c.limit(); size > limit {
		return nil, fmt.Errorf("vpmem attach %s: %w (%d bytes, limit %d)", hostPath, ErrTooLarge, size, limit)
	}
	c.mu.Lock()
	if c.byPath[resolved] != nil {
		// Someone bound it while we were sizing: start over.
		c.mu.Unlock()
		return c.Attach(ctx, hostPath)
	}
	slot := c.freeSlot()
	if slot < 0 {
		c.mu.Unlock()
		return nil, fmt.Errorf("vpmem attach %s: %w (all %d bound)", hostPath, ErrNoFreeSlot, len(c.slots))
	}
	if c.cfg.Budget != 0 && c.used+size > c.cfg.Budget {
		c.mu.Unlock()
		return nil, fmt.Errorf("vpmem attach %s: %w (%d bytes needed, %d of %d left)",
			hostPath, ErrNoFreeSlot, size, c.cfg.Budget-c.used, c.cfg.Budget)
	}
	d := &device{hostPath: resolved, dev: Device{Slot: slot, Size: size}, refs: 1, state: adding,
		guestPath: c.newGuestPath(), op: inflight.New()}
	c.slots[slot] = d
	c.byPath[resolved] = d
	c.used += size
	c.mu.Unlock()

	addr, err := c.host.AddPmem(ctx, slot, resolved, size)
	if err != nil {
		err = fmt.Errorf("vpmem attach %s: add device %d: %w", hostPath, slot, err)
		c.mu.Lock()
		delete(c.byPath, resolved)
		if !errors.Is(err, ErrPlugged) {
			c.slots[slot] = nil
			c.used -= size
		} // else the slot and its memory are lost until the VM stops
		d.op.Finish(err)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	d.dev.Addr = addr
	c.mu.Unlock()
	return c.mount(ctx, d, hostPath)
}

// remount mounts an idle, bound device again. Called with c.mu held; unlocks.
func (c *Controller) remount(ctx context.Context, d *device) (*Mount, error) {
	d.state = mounting
	d.refs = 1
	d.guestPath = c.newGuestPath()
	d.op = inflight.New()
	c.mu.Unlock()
	return c.mount(ctx, d, d.hostPath)
}

// mount is the guest step of adding and remounting. A failure leaves the
// device bound and idle: it cannot be unplugged.
func (c *Controller) mount(ctx context.Context, d *device, hostPath string) (*Mount, error) {
	c.mu.Lock()
	dev, gp := d.dev, d.guestPath
	c.mu.Unlock()
	err := c.guest.MountPmem(ctx, dev, gp)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("vpmem attach %s: mount device %d at %s in the guest: %w", hostPath, dev.Slot, gp, err)
		d.state, d.refs = idle, 0
		d.op.Finish(err)
		return nil, err
	}
	d.state = mounted
	d.op.Finish(nil)
	slog.Debug("vpmem mounted", "path", d.hostPath, "slot", dev.Slot, "guest", gp)
	return &Mount{c: c, d: d, guestPath: gp}, nil
}

// Release drops this reference; the last one unmounts the layer in the
// guest. The device stays bound to the layer for a later Attach.
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
	d.state = unmounting
	d.op = inflight.New()
	gp := d.guestPath
	c.mu.Unlock()

	err := c.guest.Unmount(ctx, gp)
	if err != nil {
		err = fmt.Errorf("vpmem release %s: unmount %s in the guest: %w", d.hostPath, gp, err)
	}
	c.mu.Lock()
	// Idle even on failure: a later Attach mounts it again at a new path.
	d.state = idle
	d.op.Finish(err)
	c.mu.Unlock()
	return err
}

// RefCount reports how many references the layer at hostPath has.
func (c *Controller) RefCount(hostPath string) int {
	resolved, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.byPath[resolved]; d != nil && d.state == mounted {
		return d.refs
	}
	return 0
}

// Bound reports how many slots are bound (or lost) and how many bytes of the
// budget they take.
func (c *Controller) Bound() (slots int, bytes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.slots {
		if d != nil {
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
	for i, d := range c.slots {
		if d == nil {
			return i
		}
	}
	return -1
}

func (c *Controller) newGuestPath() string {
	p := fmt.Sprintf("%s/m%d", GuestMountRoot, c.nextMount)
	c.nextMount++
	return p
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
