// Package vmrun runs containers in a utility VM: it starts the VM, sets
// each container up in it (layers, scratch, mounts: package resources),
// starts it through the guest agent, releases it, and ends the VM, with
// one set of rules for `layervisor run --isolation vm` and the containerd
// shim.
//
// The rules: a container whose every write dies with the VM (its root is
// its layers over a scratch nobody keeps, and nothing it mounts writable
// outlives the VM) is disposable. Removing the last container, when it is
// disposable, releases nothing: End just kills QEMU. Otherwise, or when
// any release failed, End has the guest release everything and shut down.
package vmrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vmcontainer"
)

// ReleaseTimeout bounds releasing a container's resources in the guest.
const ReleaseTimeout = 2 * time.Minute

// Options say how a Sandbox puts layers in its VM.
type Options struct {
	// Device is the device read-only layers go on ("" for InUVM's default).
	Device layers.LayerDevice
	// Trace, when set, receives the duration of each mount phase.
	Trace func(phase string, d time.Duration)
}

// Sandbox is a started utility VM and the containers set up in it. Safe
// for concurrent use; Add and Remove run one at a time.
type Sandbox struct {
	u       *uvm.UVM // nil in unit tests
	vm      resources.UVM
	mounter *layers.InUVM
	// stop ends the VM: gracefully (the guest releases everything and
	// shuts down) or not (QEMU quits); then removes it.
	stop func(ctx context.Context, graceful bool) error

	mu       sync.Mutex
	live     map[*Container]struct{}
	graceful bool     // End shuts the guest down: see Remove
	leftover []string // scratch folders Add made, left to End
	ended    bool
}

// Start creates and starts a utility VM. On failure nothing is left.
func Start(ctx context.Context, cfg uvm.Config, o Options) (*Sandbox, error) {
	u, err := uvm.Create(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create utility VM: %w", err)
	}
	if err := u.Start(ctx); err != nil {
		tctx := context.WithoutCancel(ctx)
		return nil, errors.Join(fmt.Errorf("start utility VM: %w", err), u.Kill(tctx), u.Remove(tctx))
	}
	sb := newSandbox(vmcontainer.VM{U: u}, o, func(ctx context.Context, graceful bool) error {
		stop := u.Kill
		if graceful {
			stop = u.Stop
		}
		return errors.Join(stop(ctx), u.Remove(ctx))
	})
	sb.u = u
	return sb, nil
}

func newSandbox(vm resources.UVM, o Options, stop func(context.Context, bool) error) *Sandbox {
	m := layers.NewInUVM(vm)
	m.Device, m.Trace = o.Device, o.Trace
	return &Sandbox{vm: vm, mounter: m, stop: stop, live: map[*Container]struct{}{}}
}

// UVM is the sandbox's utility VM.
func (s *Sandbox) UVM() *uvm.UVM { return s.u }

// VM is the sandbox's VM as package resources sees it (to share more
// into it).
func (s *Sandbox) VM() resources.UVM { return s.vm }

// Containers is how many containers are set up in the VM.
func (s *Sandbox) Containers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

// ContainerConfig is the input of Add.
type ContainerConfig struct {
	ID   string
	Spec *specs.Spec // finished in place by Add: the spec the guest runs
	// LayerFolders, top-most read-only layer first, scratch last. A missing
	// scratch is made from the template in TemplateRoot, and removed with
	// the container unless Keep.
	LayerFolders []string
	TemplateRoot string
	// Root is the guest path of a root file system the caller provides
	// (what the container writes there is then not disposable); "" mounts
	// the layers.
	Root string
	// Keep: the scratch outlives the container (released cleanly, never
	// removed).
	Keep bool
}

// Container is a container set up in a Sandbox.
type Container struct {
	ID   string
	Spec *specs.Spec
	// Disposable: all the container may write dies with the VM.
	Disposable bool

	sb      *Sandbox
	res     *resources.Resources
	scratch string // made by Add, removed with the container; "" if not
}

// Add sets a container up in the VM: its scratch (made when missing),
// root file system and mounts, and finishes its spec for the guest (root
// path, no mounts the guest's runtime provides). On failure nothing of it
// is left, a scratch Add made included.
func (s *Sandbox) Add(ctx context.Context, c ContainerConfig) (_ *Container, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errors.New("add container: the utility VM has ended")
	}
	if c.Spec == nil {
		return nil, errors.New("add container: spec is nil")
	}
	var made string
	if n := len(c.LayerFolders); n > 0 {
		if _, err := os.Lstat(c.LayerFolders[n-1]); errors.Is(err, os.ErrNotExist) {
			made = c.LayerFolders[n-1]
		}
	}
	if c.Spec.Root == nil {
		c.Spec.Root = &specs.Root{}
	}
	c.Spec.Root.Path = c.Root
	res, err := resources.Setup(ctx, s.vm, s.mounter, resources.Container{
		ID: c.ID, Spec: c.Spec, LayerFolders: c.LayerFolders, GuestRoot: guestpath.ContainerRoot(c.ID), TemplateRoot: c.TemplateRoot,
	})
	if err != nil {
		if made != "" {
			err = errors.Join(err, os.RemoveAll(made))
		}
		return nil, err
	}
	if c.Keep {
		made = ""
	}
	// The guest runs the same spec: its root is the overlay there (or the
	// caller's), and the binds Setup made in it are in place already.
	c.Spec.Root.Path = res.Rootfs
	c.Spec.Mounts = slices.DeleteFunc(c.Spec.Mounts, func(m specs.Mount) bool { return !runspec.RuntimeProvided(m) })
	ct := &Container{ID: c.ID, Spec: c.Spec, Disposable: !c.Keep && c.Root == "" && !res.WritesOutside,
		sb: s, res: res, scratch: made}
	s.live[ct] = struct{}{}
	return ct, nil
}

// Stdio is a container's standard streams.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Start starts the container in the guest; the request lasts as long as
// the container, so ctx should too.
func (c *Container) Start(ctx context.Context, stdio Stdio) *agent.Container {
	return c.sb.u.Agent().StartContainer(ctx, agent.ContainerRequest{ID: c.ID, Spec: c.Spec,
		Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr})
}

// Remove takes the container out of the VM: it releases its resources
// (and removes the scratch Add made) unless it is the last container and
// disposable, which End throws away with the VM. last says it was the last
// container: the caller ends the VM. Removing a container twice does
// nothing.
func (s *Sandbox) Remove(ctx context.Context, c *Container) (last bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.live[c]; !ok {
		return false, nil
	}
	delete(s.live, c)
	last = len(s.live) == 0
	if last && c.Disposable {
		if c.scratch != "" {
			s.leftover = append(s.leftover, c.scratch)
		}
		return true, nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReleaseTimeout)
	defer cancel()
	if err := c.res.Release(rctx); err != nil {
		// Something may still be mounted in the guest: it must let go of
		// it cleanly. The scratch stays (it goes with the VM's directory,
		// or gc finds it).
		s.graceful = true
		return last, err
	}
	if last {
		s.graceful = true // what it wrote outside the VM: flushed by the guest's shutdown too
	}
	if c.scratch != "" {
		return last, os.RemoveAll(c.scratch)
	}
	return last, nil
}

// End ends the VM and removes it: QEMU just quits when nothing the guest
// holds must outlive it (every container left is disposable, and nothing
// failed to release), else the guest releases everything and shuts down.
// Containers still in it go with it. End is done once; a second call does
// nothing.
func (s *Sandbox) End(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil
	}
	s.ended = true
	graceful := s.graceful
	for c := range s.live {
		graceful = graceful || !c.Disposable
		if c.scratch != "" {
			s.leftover = append(s.leftover, c.scratch)
		}
	}
	clear(s.live)
	errs := []error{s.stop(context.WithoutCancel(ctx), graceful)}
	for _, p := range s.leftover {
		errs = append(errs, os.RemoveAll(p))
	}
	s.leftover = nil
	return errors.Join(errs...)
}
