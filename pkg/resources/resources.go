// Package resources sets up everything a hypervisor-isolated container needs
// from its OCI runtime spec — scratch, root file system, mounts — inside a
// utility VM, records each resource, and releases them in reverse order.
// It is the Linux counterpart of hcsshim's hcsoci resources.
package resources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/diskimage"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// SandboxPrefix marks a mount source that is a directory inside the UVM's
// sandbox-mounts root rather than on the host.
const SandboxPrefix = runspec.SandboxPrefix

// UVM is what container resources need from a utility VM.
type UVM interface {
	layers.UVM
	// AddShare shares a host directory, or a single file without its
	// siblings, into the VM (virtiofs), ref-counted by (path, read-only);
	// the attachment's GuestPath is the directory or file in the guest.
	AddShare(ctx context.Context, hostDir string, readOnly bool) (layers.Attachment, error)
	// AttachDisk attaches a disk image in the given format (or, with
	// passThrough, a host block device) over SCSI and mounts it in the guest.
	AttachDisk(ctx context.Context, hostPath string, format diskformat.Format, readOnly, passThrough bool) (layers.Attachment, error)
	// BindMount binds a guest path onto a guest target (created if needed).
	BindMount(ctx context.Context, source, target string, readOnly bool) error
	// Unmount unmounts a guest path.
	Unmount(ctx context.Context, target string) error
	// SandboxMountsRoot is the guest directory that sandbox:// sources live in.
	SandboxMountsRoot() string
}

// Container is the input of Setup.
type Container struct {
	ID   string
	Spec *specs.Spec
	// LayerFolders, top-most read-only layer first, scratch last. When nil,
	// Spec.Windows.LayerFolders is used (the field hcsshim reads).
	LayerFolders []string
	// ScratchSize, ScratchFormat and TemplateRoot say how to create a
	// missing scratch.
	ScratchSize   int64
	ScratchFormat diskformat.Format
	TemplateRoot  string
	// GuestRoot is the container's directory in the UVM; its rootfs is
	// <GuestRoot>/rootfs.
	GuestRoot string
}

// Resources records what Setup set up, to release it in reverse order.
type Resources struct {
	steps  []release
	Rootfs string // guest path of the container's root file system
	// WritesOutside: a writable share or disk is mounted, so what the
	// container writes there outlives the UVM (sandbox mounts and the
	// scratch live and die with it).
	WritesOutside bool
}

type release struct {
	name string
	fn   func(context.Context) error
	// alongside marks an attachment behind a mount (a share, a disk):
	// once its bind is gone, nothing released later needs it gone first,
	// so it is released at the same time as the others. Each is a
	// hot-unplug whose wait for the guest is mostly latency (~0.1 s per
	// share under TCG).
	alongside bool
}

func (r *Resources) add(name string, fn func(context.Context) error) {
	r.steps = append(r.steps, release{name: name, fn: fn})
}

func (r *Resources) addAttachment(name string, fn func(context.Context) error) {
	r.steps = append(r.steps, release{name: name, fn: fn, alongside: true})
}

// Release releases every resource in reverse order, continuing past
// failures, and returns them joined; the attachments behind mounts are
// released alongside each other (each once its bind is gone). Released
// steps are forgotten, so a second call retries only what failed.
func (r *Resources) Release(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	errs := make([]error, len(r.steps))
	var wg sync.WaitGroup
	for i := len(r.steps) - 1; i >= 0; i-- {
		s := r.steps[i]
		run := func() {
			if err := s.fn(ctx); err != nil {
				slog.Warn("release container resource", "resource", s.name, "err", err)
				errs[i] = fmt.Errorf("release %s: %w", s.name, err)
			}
		}
		if s.alongside {
			wg.Add(1)
			go func() { defer wg.Done(); run() }()
		} else {
			run()
		}
	}
	wg.Wait()
	var failed []release
	var joined []error
	for i := len(r.steps) - 1; i >= 0; i-- {
		if errs[i] != nil {
			failed = append([]release{r.steps[i]}, failed...)
			joined = append(joined, errs[i])
		}
	}
	r.steps = failed
	return errors.Join(joined...)
}

// Setup creates the scratch if missing, mounts the container's layers in
// the UVM when Spec.Root.Path is empty (and sets it), and sets up each
// mount. On failure everything set up so far is released.
func Setup(ctx context.Context, vm UVM, mounter *layers.InUVM, c Container) (_ *Resources, err error) {
	res := &Resources{}
	defer func() {
		if err != nil {
			err = errors.Join(err, res.Release(ctx))
		}
	}()
	if c.Spec == nil {
		return nil, errors.New("invalid OCI spec: spec is nil")
	}
	folders := c.LayerFolders
	if folders == nil && c.Spec.Windows != nil {
		folders = c.Spec.Windows.LayerFolders
	}
	if len(folders) == 0 {
		return nil, errors.New("field 'Spec.Windows.LayerFolders' is not populated")
	}
	l, err := layers.FromFolders(folders)
	if err != nil {
		return nil, err
	}
	if err := ensureScratch(ctx, l.Scratch, c); err != nil {
		return nil, err
	}

	if c.Spec.Root == nil {
		c.Spec.Root = &specs.Root{}
	}
	if c.Spec.Root.Path == "" {
		rootfs, err := mounter.Mount(ctx, c.ID, l, c.GuestRoot)
		if err != nil {
			return nil, err
		}
		res.add("container layers", func(ctx context.Context) error {
			return mounter.Unmount(ctx, c.ID, layers.UnmountAll)
		})
		c.Spec.Root.Path = rootfs
	}
	res.Rootfs = c.Spec.Root.Path

	for i, m := range c.Spec.Mounts {
		if runspec.RuntimeProvided(m) {
			continue // the guest's exec sets up /proc, /dev and /sys itself
		}
		if err := setupMount(ctx, vm, c, res, m); err != nil {
			return nil, fmt.Errorf("mount %d (%s -> %s): %w", i, m.Source, m.Destination, err)
		}
	}
	return res, nil
}

// ensureScratch creates the scratch folder and its image from the template
// when missing. A symlinked (shared) scratch is used as it is.
func ensureScratch(ctx context.Context, folder string, c Container) error {
	if _, err := layers.ScratchImage(folder); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	img := filepath.Join(folder, layers.ScratchFile)
	if c.ScratchFormat == diskformat.VHDX {
		img = filepath.Join(folder, layers.ScratchVHDX)
	}
	if c.TemplateRoot == "" {
		return fmt.Errorf("scratch %s is missing and no template root is configured", img)
	}
	if err := os.MkdirAll(folder, 0o700); err != nil {
		return fmt.Errorf("scratch folder: %w", err)
	}
	size := c.ScratchSize
	if size == 0 {
		size = scratch.DefaultSize
	}
	tpl, err := scratch.EnsureTemplateFormat(ctx, c.TemplateRoot, size, c.ScratchFormat)
	if err != nil {
		return err
	}
	return scratch.Clone(ctx, tpl, img)
}

// containerTarget maps a destination in the container to a guest path under
// the rootfs, refusing escapes.
func containerTarget(rootfs, dest string) (string, error) {
	if !path.IsAbs(dest) {
		return "", fmt.Errorf("destination %q is not an absolute path", dest)
	}
	for _, part := range strings.Split(dest, "/") {
		if part == ".." {
			return "", fmt.Errorf("destination %q contains \"..\"", dest)
		}
	}
	clean := path.Clean(dest)
	if clean == "/" {
		return "", fmt.Errorf("destination %q would replace the root", dest)
	}
	return path.Join(rootfs, clean), nil
}

func setupMount(ctx context.Context, vm UVM, c Container, res *Resources, m specs.Mount) error {
	if m.Source == "" || m.Destination == "" {
		return fmt.Errorf("invalid OCI spec - mount needs both source (%q) and destination (%q)", m.Source, m.Destination)
	}
	target, err := containerTarget(res.Rootfs, m.Destination)
	if err != nil {
		return err
	}
	ro := runspec.ReadOnly(m)
	bind := func(src string) error {
		if err := vm.BindMount(ctx, src, target, ro); err != nil {
			return err
		}
		res.add("bind "+m.Destination, func(ctx context.Context) error { return vm.Unmount(ctx, target) })
		return nil
	}

	if strings.HasPrefix(m.Source, SandboxPrefix) {
		sub := strings.TrimPrefix(m.Source, SandboxPrefix)
		if sub == "" || path.IsAbs(sub) {
			return fmt.Errorf("sandbox mount source %q must be a relative path", m.Source)
		}
		for _, part := range strings.Split(sub, "/") {
			if part == ".." {
				return fmt.Errorf("sandbox mount source %q escapes the sandbox root", m.Source)
			}
		}
		dir := path.Join(vm.SandboxMountsRoot(), path.Clean(sub))
		// Creating it again is fine: sandbox directories are shared on purpose.
		if err := vm.MkdirAll(ctx, dir); err != nil {
			return err
		}
		return bind(dir)
	}

	switch m.Type {
	case "", "bind":
		return setupBind(ctx, vm, res, m, ro, bind)
	case "physical-disk", "virtual-disk":
		format := diskformat.Raw // a block device
		if m.Type == runspec.TypeVirtualDisk {
			var err error
			if format, err = diskFormat(m.Source, runspec.DiskFormat(m)); err != nil {
				return err
			}
		}
		a, err := vm.AttachDisk(ctx, m.Source, format, ro, m.Type == runspec.TypePhysicalDisk)
		if err != nil {
			return err
		}
		res.addAttachment(m.Type+" "+m.Source, a.Release)
		res.WritesOutside = res.WritesOutside || !ro
		return bind(a.GuestPath())
	case "extensible-virtual-disk":
		return errors.New("mount type \"extensible-virtual-disk\" is not supported on Linux")
	default:
		return fmt.Errorf("invalid OCI spec - Type '%s' not supported", m.Type)
	}
}

// setupBind shares a host directory, or a single file (the share controller
// exposes it without its siblings), and binds it at the destination.
func setupBind(ctx context.Context, vm UVM, res *Resources, m specs.Mount, ro bool, bind func(string) error) error {
	if !filepath.IsAbs(m.Source) {
		return fmt.Errorf("bind source %q is not an absolute host path", m.Source)
	}
	if _, err := os.Stat(m.Source); err != nil {
		return fmt.Errorf("bind source: %w", err)
	}
	a, err := vm.AddShare(ctx, m.Source, ro)
	if err != nil {
		return err
	}
	res.addAttachment("share "+m.Source, a.Release)
	res.WritesOutside = res.WritesOutside || !ro
	return bind(a.GuestPath())
}

// diskFormat maps a virtual disk's registered format (runspec.DiskFormat:
// the mount's format= option or the file name) to how QEMU opens it. For a
// VHD the footer's disk type picks fixed (opened raw, cut before the
// footer) or dynamic (QEMU's vpc): the guest cannot reach a footer through
// either, so it is not content the guest decides.
func diskFormat(path, name string) (diskformat.Format, error) {
	f, err := diskformat.Parse(name, diskimage.Formats()...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if f != diskformat.VHD {
		return f, nil
	}
	file, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return "", err
	}
	ft, err := vhd.ReadFooter(file, st.Size())
	if err != nil {
		return "", fmt.Errorf("%s (format vhd): %w", path, err)
	}
	if ft.DiskType == vhd.DiskTypeFixed {
		return diskformat.VHDFixed, nil
	}
	return diskformat.VHDDynamic, nil
}
