//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/pkg/procrun"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/vmrun"
)

// runInUVM creates the run's container (claimed: package procrun), starts
// a utility VM, sets the container up in it, runs it through the agent,
// and tears it all down (package vmrun decides how: a disposable
// container's VM just quits).
func runInUVM(ctx context.Context, s *store.Store, o runOptions, image, cname string, copts store.ContainerOptions, spec *specs.Spec) (code int, err error) {
	if o.uvmID != "" {
		// Attachments are managed by the process that started a UVM; a
		// UVM started elsewhere cannot take new hot-plugs from here.
		return 0, errors.New("--uvm: running in a UVM started by another process is not supported yet; omit --uvm to start one for this run")
	}
	ctr, err := procrun.Create(ctx, s, cname, image, copts)
	if err != nil {
		return 0, err
	}
	o.timer.mark("create")
	// Teardown runs even after Ctrl-C cancelled ctx.
	teardown := context.WithoutCancel(ctx)
	defer func() {
		err = errors.Join(err, ctr.End(teardown, o.keep))
		if !o.keep {
			o.timer.mark("teardown")
		}
	}()
	cfg := envconfig.UVM()
	cfg.ID, cfg.Root, cfg.Cold = cname, s.Root(), cfg.Cold || o.cold
	sb, err := vmrun.Start(ctx, cfg, vmrun.Options{Device: o.device, Trace: o.timer.add})
	if err != nil {
		return 0, err
	}
	defer func() {
		defer o.timer.mark("teardown")
		err = errors.Join(err, sb.End(teardown))
	}()
	o.timer.mark("boot") // create and boot
	folders, err := s.LayerFolders(cname)
	if err != nil {
		return 0, err
	}
	c, err := sb.Add(ctx, vmrun.ContainerConfig{ID: cname, Spec: spec, LayerFolders: folders, Keep: o.keep})
	if err != nil {
		return 0, err
	}
	o.timer.mark("mount")
	defer func() {
		o.timer.mark("exec")
		if _, rerr := sb.Remove(teardown, c); rerr != nil {
			slog.Error("release container resources", "err", rerr)
			err = errors.Join(err, rerr)
		}
	}()
	stdio := runStdio(o)
	ct := c.Start(context.WithoutCancel(ctx), vmrun.Stdio{Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr})
	code, err = procrun.Supervise(ctx, ct, callerTTY(o), o.stopTimeout)
	if err != nil {
		return 0, fmt.Errorf("run in UVM: %w", err)
	}
	return code, nil
}
