package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/store"
)

// A run's container belongs to the run: the run holds a lock on
// <root>/runs/<name>.lock from before it creates the container until its
// teardown is done. The kernel drops the lock when the run dies, even by
// SIGKILL, so gc takes a free lock as "the run is gone" and removes its
// container (unmounting it first). Its UVM, if any, is reaped by uvm.GC.

func runClaimPath(root, name string) string { return filepath.Join(root, "runs", name+".lock") }

// claimRun takes the claim on the container name; release drops it after
// the container is torn down (or kept with --keep: it is then an ordinary
// container).
func claimRun(root, name string) (release func(), err error) {
	p := runClaimPath(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	l, err := flock.Acquire(p)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	return func() {
		os.Remove(p)
		l.Release()
	}, nil
}

// reapDeadRuns removes the containers of runs that died before their
// teardown and returns their names.
func reapDeadRuns(ctx context.Context, s *store.Store) ([]string, error) {
	ps, _ := filepath.Glob(filepath.Join(s.Root(), "runs", "*.lock"))
	var reaped []string
	var errs []error
	for _, p := range ps {
		l, ok, err := flock.TryAcquire(p)
		if err != nil || !ok {
			continue // the run is alive
		}
		name := strings.TrimSuffix(filepath.Base(p), ".lock")
		// A process-isolated run's container may outlive it (its runtime
		// died with it, the container's init did not): kill it first.
		if ids, lerr := hostRuntime(s.Root()).List(ctx); lerr == nil && slices.Contains(ids, name) {
			if derr := hostRuntime(s.Root()).Delete(ctx, name); derr != nil {
				errs = append(errs, fmt.Errorf("container %s of a dead run: %w", name, derr))
				l.Release()
				continue
			}
		}
		os.RemoveAll(runBundlePath(s.Root(), name))
		err = s.RemoveContainer(ctx, name)
		switch {
		case err == nil:
			reaped = append(reaped, name)
			os.Remove(p)
		case errors.Is(err, store.ErrNotFound):
			os.Remove(p) // died before creating it, or after removing it
		default:
			errs = append(errs, fmt.Errorf("container %s of a dead run: %w", name, err))
		}
		l.Release()
	}
	return reaped, errors.Join(errs...)
}

// hostRuntime is the OCI runtime of process-isolated runs, with its state
// under the store's root so gc finds what a dead run left.
func hostRuntime(root string) *ociruntime.Runtime {
	return &ociruntime.Runtime{Binary: os.Getenv("LAYERVISOR_OCI_RUNTIME"), StateDir: filepath.Join(root, "runtime")}
}

// runBundlePath is where a run's OCI bundle (its config.json) is written.
func runBundlePath(root, name string) string { return filepath.Join(root, "runs", name+".bundle") }
