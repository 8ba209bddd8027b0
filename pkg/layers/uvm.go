package layers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// Attachment is a reference-counted device or share in a utility VM.
type Attachment interface {
	// GuestPath is where the attachment is mounted inside the VM.
	GuestPath() string
	// Release drops this reference; the controller detaches at zero.
	Release(ctx context.Context) error
}

// Errors a UVM returns from AttachVPMem to ask for the SCSI fallback.
var (
	ErrVPMemNoSlot   = errors.New("no free VPMEM slot")
	ErrVPMemTooLarge = errors.New("layer too large for VPMEM")
)

// UVM is what mounting layers in a utility VM needs from it. Package uvm
// provides it on a running VM; tests use fakes.
type UVM interface {
	// AttachVPMem maps a read-only layer image as persistent memory and
	// mounts it in the guest. It fails with ErrVPMemNoSlot or
	// ErrVPMemTooLarge (wrapped) when the layer must go to SCSI instead.
	AttachVPMem(ctx context.Context, hostPath string) (Attachment, error)
	// AttachSCSI hot-adds a disk image and mounts it in the guest. The same
	// host path with the same options is attached once and ref-counted.
	// format is how the host opens the image, decided by layervisor
	// (never by the image's content, which a guest may have written).
	AttachSCSI(ctx context.Context, hostPath string, format scsi.Format, readOnly bool) (Attachment, error)
	// MkdirAll creates a directory in the guest.
	MkdirAll(ctx context.Context, guestPath string) error
	// CombineLayers mounts an overlay of lowers (top-most first) with upper
	// and work at target in the guest, creating upper, work and target
	// (one round trip: each costs a guest wake-up).
	CombineLayers(ctx context.Context, lowers []string, upper, work, target string) error
	// RemoveCombinedLayers unmounts an overlay made by CombineLayers.
	RemoveCombinedLayers(ctx context.Context, target string) error
}

type attachKind int

const (
	kindVPMem attachKind = iota
	kindSCSI
)

type uvmAttachment struct {
	hostPath string
	kind     attachKind
	a        Attachment
}

type uvmMount struct {
	rootfs  string
	layers  []*uvmAttachment // released ones are nil
	scratch *uvmAttachment
}

// LayerDevice is the device InUVM puts read-only layers on.
type LayerDevice string

const (
	// LayerDeviceVPMem maps layers as persistent memory and falls back to
	// SCSI when VPMEM has no slot or room: hcsshim's order. The zero value.
	LayerDeviceVPMem LayerDevice = "vpmem"
	// LayerDeviceSCSI attaches layers as read-only SCSI disks. A SCSI LUN
	// joins an existing controller, where each VPMEM device is a PCI
	// hot-plug the guest must enumerate: here (TCG) three layers attach in
	// about half the time. Without DAX in the guest both end up in its page
	// cache, so VPMEM saves no memory.
	LayerDeviceSCSI LayerDevice = "scsi"
)

// ParseLayerDevice checks a --layer-device value.
func ParseLayerDevice(s string) (LayerDevice, error) {
	switch d := LayerDevice(s); d {
	case LayerDeviceVPMem, LayerDeviceSCSI:
		return d, nil
	}
	return "", fmt.Errorf("layer device %q: use %s or %s", s, LayerDeviceSCSI, LayerDeviceVPMem)
}

// InUVM mounts containers' layers inside one utility VM and remembers what
// each container attached, so that unmount (possibly in parts) releases
// exactly that. Safe for concurrent use.
type InUVM struct {
	// Trace, when set, receives the duration of each mount phase
	// ("attach", "combine"), for timing reports.
	Trace func(phase string, d time.Duration)
	// Device is where read-only layers go; empty means LayerDeviceVPMem.
	Device LayerDevice

	vm     UVM
	mu     sync.Mutex
	mounts map[string]*uvmMount
	// combined is true while a container's overlay is mounted.
	combined map[string]bool
}

// NewInUVM returns a layer mounter for vm.
func NewInUVM(vm UVM) *InUVM {
	return &InUVM{vm: vm, mounts: map[string]*uvmMount{}, combined: map[string]bool{}}
}

// GuestRootfs is where a container's root file system appears in the guest.
func GuestRootfs(guestRoot string) string { return path.Join(guestRoot, "rootfs") }

// Mount attaches the container's layers (VPMEM, falling back to SCSI when
// VPMEM has no slot or the layer is too large) and its scratch (SCSI,
// read-write; a shared scratch reuses the existing attachment), then
// combines them with overlay at <guestRoot>/rootfs, which it returns. On
// failure it releases everything this call attached.
func (m *InUVM) Mount(ctx context.Context, id string, l Layers, guestRoot string) (rootfs string, err error) {
	plan, err := NewPlan(id, l)
	if err != nil {
		return "", err
	}
	if !path.IsAbs(guestRoot) {
		return "", fmt.Errorf("guest root %q is not an absolute path", guestRoot)
	}
	m.mu.Lock()
	if _, ok := m.mounts[id]; ok {
		m.mu.Unlock()
		return "", fmt.Errorf("container %s: layers are already mounted in the UVM", id)
	}
	rec := &uvmMount{rootfs: GuestRootfs(guestRoot)}
	m.mounts[id] = rec // reserve the id
	m.mu.Unlock()

	var u undo.Stack
	defer func() {
		if err != nil {
			err = errors.Join(err, u.Run(ctx))
			m.mu.Lock()
			delete(m.mounts, id)
			m.mu.Unlock()
		}
	}()

	t0 := time.Now()
	layerMounts := make([]string, 0, len(plan.Layers))
	for i, hostPath := range plan.Layers {
		at, err := m.attachLayer(ctx, hostPath)
		if err != nil {
			return "", fmt.Errorf("layer folder %s: %w", l.ReadOnly[i], err)
		}
		u.Push("release layer "+hostPath, at.a.Release)
		rec.layers = append(rec.layers, at)
		layerMounts = append(layerMounts, at.a.GuestPath())
	}

	scratchHost := plan.Scratch
	sa, err := m.vm.AttachSCSI(ctx, scratchHost, plan.ScratchFormat(), false)
	if err != nil {
		return "", fmt.Errorf("scratch %s: %w", scratchHost, err)
	}
	u.Push("release scratch", sa.Release)
	rec.scratch = &uvmAttachment{hostPath: scratchHost, kind: kindSCSI, a: sa}

	m.trace("attach", t0)
	t0 = time.Now()
	ov, err := plan.Overlay(layerMounts, sa.GuestPath())
	if err != nil {
		return "", err
	}
	if err := m.vm.CombineLayers(ctx, ov.Lowers, ov.Upper, ov.Work, rec.rootfs); err != nil {
		return "", fmt.Errorf("container %s: combine layers: %w", id, err)
	}
	m.mu.Lock()
	m.combined[id] = true
	m.mu.Unlock()
	m.trace("combine", t0)
	slog.Debug("mounted container layers in UVM", "id", id, "rootfs", rec.rootfs, "layers", len(layerMounts))
	return rec.rootfs, nil
}

func (m *InUVM) trace(phase string, since time.Time) {
	if m.Trace != nil {
		m.Trace(phase, time.Since(since))
	}
}

func (m *InUVM) attachLayer(ctx context.Context, hostPath string) (*uvmAttachment, error) {
	how := "attach as SCSI"
	if m.Device != LayerDeviceSCSI {
		a, err := m.vm.AttachVPMem(ctx, hostPath)
		if err == nil {
			return &uvmAttachment{hostPath: hostPath, kind: kindVPMem, a: a}, nil
		}
		if !errors.Is(err, ErrVPMemNoSlot) && !errors.Is(err, ErrVPMemTooLarge) {
			return nil, fmt.Errorf("attach as VPMEM: %w", err)
		}
		slog.Debug("layer falls back to SCSI", "layer", hostPath, "reason", err)
		how = fmt.Sprintf("attach as SCSI after VPMEM refused (%v)", err)
	}
	a, err := m.vm.AttachSCSI(ctx, hostPath, LayerFormat, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", how, err)
	}
	return &uvmAttachment{hostPath: hostPath, kind: kindSCSI, a: a}, nil
}

// Unmount removes the container's combined layers (always, first), then
// releases what op selects: the scratch and SCSI layers with UnmountSCSI,
// VPMEM layers with UnmountVPMem. It continues past failures and returns
// them joined. What is not released stays recorded for a later Unmount.
func (m *InUVM) Unmount(ctx context.Context, id string, op UnmountOp) error {
	m.mu.Lock()
	rec, ok := m.mounts[id]
	combined := m.combined[id]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("container %s: %w", id, ErrNotMounted)
	}
	var errs []error
	if combined {
		if err := m.vm.RemoveCombinedLayers(ctx, rec.rootfs); err != nil {
			errs = append(errs, fmt.Errorf("container %s: remove combined layers: %w", id, err))
		} else {
			m.mu.Lock()
			delete(m.combined, id)
			m.mu.Unlock()
		}
	}
	release := func(at *uvmAttachment) bool {
		if err := at.a.Release(ctx); err != nil {
			errs = append(errs, fmt.Errorf("container %s: release %s: %w", id, at.hostPath, err))
			return false
		}
		return true
	}
	if op&UnmountSCSI != 0 && rec.scratch != nil && release(rec.scratch) {
		rec.scratch = nil
	}
	for i := len(rec.layers) - 1; i >= 0; i-- {
		at := rec.layers[i]
		if at == nil {
			continue
		}
		if (at.kind == kindVPMem && op&UnmountVPMem != 0) || (at.kind == kindSCSI && op&UnmountSCSI != 0) {
			if release(at) {
				rec.layers[i] = nil
			}
		}
	}
	m.mu.Lock()
	if rec.scratch == nil && allNil(rec.layers) && !m.combined[id] {
		delete(m.mounts, id)
	}
	m.mu.Unlock()
	return errors.Join(errs...)
}

func allNil(as []*uvmAttachment) bool {
	for _, a := range as {
		if a != nil {
			return false
		}
	}
	return true
}

// Mounted reports whether the container has anything attached in the UVM.
func (m *InUVM) Mounted(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.mounts[id]
	return ok
}
