// Package fakeuvm is an in-memory model of a utility VM's controllers, with
// exact reference counts and failure injection, for unit-testing the state
// machines built on them (layers, resources). Real VMs test the real thing.
//
// It follows the controllers' contract (internal/refcount, checked against
// both by internal/attachtest.Contract): only the last reference's Release
// does work and so can fail; a failed Release keeps the reference and a
// later Release retries; Release after a successful one is
// refcount.ErrAlreadyReleased; a VPMEM slot stays bound to its layer once
// used.
package fakeuvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/layervisor/layervisor/internal/refcount"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/layers"
)

// UVM is a ref-counting model of a UVM's controllers, with failure
// injection, for unit-testing InUVM's logic. Real VMs test the real thing.
type UVM struct {
	mu          sync.Mutex
	VPMemSlots  int
	VPMemMax    int64
	Refs        map[string]int // "vpmem:"/"scsi:" + host path
	ReadOnly    map[string]bool
	Formats     map[string]diskformat.Format // how each SCSI disk was opened
	Combined    map[string][]string
	Dirs        map[string]bool
	FailVPMem   error
	FailSCSI    string // host path whose SCSI attach fails
	FailCombine bool
	// FailRelease makes the last Release of a key ending with it fail.
	FailRelease string
	// Bound are the layers holding a VPMEM slot: never unbound (QEMU
	// cannot unplug pmem), so a slot is reused only by its own layer.
	Bound       map[string]bool
	AttachCalls int
	FailShare   bool
	Binds       map[string]string // guest target -> source
}

// New returns an empty fake with 64 VPMEM slots of 1 GiB.
func New() *UVM {
	return &UVM{VPMemSlots: 64, VPMemMax: 1 << 30, Refs: map[string]int{}, ReadOnly: map[string]bool{}, Combined: map[string][]string{}, Dirs: map[string]bool{}, Bound: map[string]bool{}}
}

type attachment struct {
	f        *UVM
	key      string
	path     string
	released bool // under f.mu
}

func (a *attachment) GuestPath() string { return a.path }
func (a *attachment) Release(ctx context.Context) error {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	if a.released {
		return fmt.Errorf("%s: %w", a.key, refcount.ErrAlreadyReleased)
	}
	if a.f.Refs[a.key] <= 0 {
		return fmt.Errorf("release of %s below zero", a.key)
	}
	if a.f.Refs[a.key] == 1 && a.f.FailRelease != "" && strings.HasSuffix(a.key, a.f.FailRelease) {
		return fmt.Errorf("release %s: injected failure", a.key) // the reference is kept
	}
	a.released = true
	a.f.Refs[a.key]--
	if a.f.Refs[a.key] == 0 {
		delete(a.f.Refs, a.key)
	}
	return nil
}

func (f *UVM) AttachVPMem(ctx context.Context, hostPath string) (layers.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.AttachCalls++
	if f.FailVPMem != nil {
		return nil, f.FailVPMem
	}
	key := "vpmem:" + hostPath
	if !f.Bound[hostPath] {
		if len(f.Bound) >= f.VPMemSlots {
			return nil, fmt.Errorf("attach %s: %w", hostPath, layers.ErrVPMemNoSlot)
		}
		st, err := os.Stat(hostPath)
		if err != nil {
			return nil, err
		}
		if st.Size() > f.VPMemMax {
			return nil, fmt.Errorf("attach %s: %w", hostPath, layers.ErrVPMemTooLarge)
		}
		f.Bound[hostPath] = true
	}
	f.Refs[key]++
	return &attachment{f: f, key: key, path: "/run/layers/p-" + filepath.Base(filepath.Dir(hostPath))}, nil
}

func (f *UVM) AttachSCSI(ctx context.Context, hostPath string, format diskformat.Format, ReadOnly bool) (layers.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.AttachCalls++
	if f.FailSCSI != "" && strings.HasSuffix(hostPath, f.FailSCSI) {
		return nil, errors.New("injected SCSI failure")
	}
	key := "scsi:" + hostPath
	if !format.Attachable() {
		return nil, fmt.Errorf("scsi attach %s: unknown disk format %q", hostPath, format)
	}
	if f.Refs[key] > 0 && (f.ReadOnly[key] != ReadOnly || f.Formats[key] != format) {
		return nil, errors.New("conflicting attach")
	}
	if f.Formats == nil {
		f.Formats = map[string]diskformat.Format{}
	}
	f.Formats[key] = format
	f.Refs[key]++
	f.ReadOnly[key] = ReadOnly
	return &attachment{f: f, key: key, path: "/run/mounts/scsi/" + filepath.Base(filepath.Dir(hostPath))}, nil
}

func (f *UVM) MkdirAll(ctx context.Context, p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Dirs[p] = true
	return nil
}

func (f *UVM) CombineLayers(ctx context.Context, lowers []string, upper, work, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailCombine {
		return errors.New("injected combine failure")
	}
	if _, ok := f.Combined[target]; ok {
		return errors.New("target busy")
	}
	f.Combined[target] = append(slices.Clone(lowers), upper, work)
	return nil
}

func (f *UVM) RemoveCombinedLayers(ctx context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.Combined[target]; !ok {
		return errors.New("not Combined")
	}
	delete(f.Combined, target)
	return nil
}

// Total is the sum of all references plus Combined overlays: zero means nothing leaked.
func (f *UVM) Total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.Refs {
		n += v
	}
	return n + len(f.Combined) + len(f.Binds)
}

// AddShare models a virtiofs share ref-counted by (path, read-only).
func (f *UVM) AddShare(ctx context.Context, hostDir string, readOnly bool) (layers.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailShare {
		return nil, errors.New("injected share failure")
	}
	key := fmt.Sprintf("share:%s:ro=%v", hostDir, readOnly)
	f.Refs[key]++
	return &attachment{f: f, key: key, path: "/run/shares/" + filepath.Base(hostDir)}, nil // a file's share is the file
}

// AttachDisk models a SCSI disk mounted in the guest.
func (f *UVM) AttachDisk(ctx context.Context, hostPath string, format diskformat.Format, readOnly, passThrough bool) (layers.Attachment, error) {
	if _, err := os.Stat(hostPath); err != nil {
		return nil, err
	}
	return f.AttachSCSI(ctx, hostPath, format, readOnly)
}

// BindMount records a guest bind mount.
func (f *UVM) BindMount(ctx context.Context, source, target string, readOnly bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Binds == nil {
		f.Binds = map[string]string{}
	}
	if _, ok := f.Binds[target]; ok {
		return fmt.Errorf("bind target %s busy", target)
	}
	f.Binds[target] = source
	return nil
}

// BindSource is what target is bound from, if it is (safe while other
// goroutines bind and unmount).
func (f *UVM) BindSource(target string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	src, ok := f.Binds[target]
	return src, ok
}

// Unmount removes a guest bind mount.
func (f *UVM) Unmount(ctx context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.Binds[target]; !ok {
		return fmt.Errorf("%s not mounted", target)
	}
	delete(f.Binds, target)
	return nil
}

// SandboxMountsRoot is the fake's sandbox directory root.
func (f *UVM) SandboxMountsRoot() string { return "/run/sandbox-mounts" }
