// Package sysgc is layervisor's system-wide garbage collection (the CLI's
// gc): it reconciles the store, the utility VMs and the runs after crashes
// and removes what nothing uses, in the one order that works:
//
//  1. utility VMs (uvm.GC): reaps those whose owner or QEMU died, kills
//     orphan QEMU and virtiofsd processes, removes stale templates. A
//     reaped VM no longer holds anything of the store.
//  2. the store (store.GC): rolls back incomplete mounts, releases stray
//     mounts and loop devices, removes temp files and unused layers.
//  3. the containers of runs that died before their teardown
//     (procrun.ReapDead): incomplete mounts are rolled back by now.
package sysgc

import (
	"context"
	"errors"
	"fmt"

	"github.com/layervisor/layervisor/pkg/procrun"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// Options are the host settings the collection needs.
type Options struct {
	// UVMHost is the utility VM host settings (uvm.GC's).
	UVMHost uvm.HostOptions
	// OCIRuntime is the host's OCI runtime binary, which deletes what a
	// dead process-isolated run left ("" finds one on PATH).
	OCIRuntime string
}

// Report is what a collection did.
type Report struct {
	Store store.GCReport `json:"store"`
	UVMs  uvm.GCReport   `json:"uvms"`
	// DeadRuns are the containers of runs that died before their
	// teardown, removed.
	DeadRuns []string `json:"deadRuns"`
}

// Run collects everything under the store's root, each step even when an
// earlier one failed; the error joins the steps' errors, and the report
// says what was done regardless.
func Run(ctx context.Context, s *store.Store, o Options) (Report, error) {
	var rep Report
	var errs []error
	var err error
	// UVMs first: a reaped VM no longer holds anything.
	if rep.UVMs, err = uvm.GC(ctx, s.Root(), o.UVMHost); err != nil {
		errs = append(errs, fmt.Errorf("gc of utility VMs: %w", err))
	}
	if rep.Store, err = s.GC(ctx); err != nil {
		errs = append(errs, fmt.Errorf("gc of the store: %w", err))
	}
	// Then the containers of dead runs (incomplete mounts are rolled back by now).
	rep.DeadRuns, err = procrun.ReapDead(ctx, s, o.OCIRuntime) // its errors name the run
	errs = append(errs, err)
	return rep, errors.Join(errs...)
}
