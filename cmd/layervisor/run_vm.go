//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/guestpath"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vmcontainer"
)

// runInUVM starts a utility VM, sets the container up in it, runs argv in
// the container's root file system through the agent, and tears it all down.
func runInUVM(ctx context.Context, s *store.Store, o runOptions, cname string, spec *specs.Spec) (code int, err error) {
	if o.uvmID != "" {
		// Attachments are managed by the process that started a UVM; a
		// UVM started elsewhere cannot take new hot-plugs from here.
		return 0, errors.New("--uvm: running in a UVM started by another process is not supported yet; omit --uvm to start one for this run")
	}
	teardown := context.WithoutCancel(ctx)
	cfg := envconfig.UVM()
	cfg.ID, cfg.Root, cfg.Cold = cname, s.Root(), cfg.Cold || o.cold
	u, err := uvm.Create(ctx, cfg)
	if err != nil {
		return 0, err
	}
	// When all the guest may write is thrown away afterwards (the scratch,
	// without --keep, and no writable share or disk), nothing needs
	// releasing or flushing: QEMU just quits. Otherwise (or when the set-up
	// failed) the guest unmounts everything (a writable disk or share must
	// not lose what the guest still caches) and shuts down.
	disposable := false
	defer func() {
		defer o.timer.mark("teardown")
		stop := u.Stop
		if disposable {
			stop = u.Kill
		}
		if serr := stop(teardown); serr != nil {
			err = errors.Join(err, serr)
		}
		if rerr := u.Remove(teardown); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	o.timer.mark("create")
	if err := u.Start(ctx); err != nil {
		return 0, err
	}
	o.timer.mark("boot")
	folders, err := s.LayerFolders(cname)
	if err != nil {
		return 0, err
	}
	vm := vmcontainer.VM{U: u}
	mounter := layers.NewInUVM(vm)
	mounter.Trace = o.timer.add
	mounter.Device = o.device
	spec.Root.Path = "" // Setup mounts the layers and sets it (hcsshim's rule)
	res, err := resources.Setup(ctx, vm, mounter, resources.Container{
		ID: cname, Spec: spec, LayerFolders: folders, GuestRoot: guestpath.ContainerRoot(cname),
	})
	if err != nil {
		return 0, err
	}
	disposable = !o.keep && !res.WritesOutside
	o.timer.mark("mount")
	defer func() {
		o.timer.mark("exec")
		if disposable {
			return
		}
		if rerr := res.Release(teardown); rerr != nil {
			slog.Error("release container resources", "err", rerr)
			err = errors.Join(err, rerr)
		}
	}()
	// The guest runs the same spec: its root is the overlay there, and
	// the binds resources.Setup made in it are in place already.
	spec.Root.Path = res.Rootfs
	spec.Mounts = slices.DeleteFunc(spec.Mounts, func(m specs.Mount) bool { return !runspec.RuntimeProvided(m) })
	ct := u.Agent().StartContainer(context.WithoutCancel(ctx), agent.ContainerRequest{ID: cname, Spec: spec,
		Stdin: runStdin(o), Stdout: os.Stdout, Stderr: os.Stderr})
	code, err = superviseLocal(ctx, ct, o)
	if err != nil {
		return 0, fmt.Errorf("run in UVM: %w", err)
	}
	return code, nil
}
