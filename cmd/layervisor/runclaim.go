package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/runspec"
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
		if rerr := reapRunContainer(ctx, s.Root(), name); rerr != nil {
			errs = append(errs, fmt.Errorf("container %s of a dead run: %w", name, rerr))
			l.Release()
			continue
		}
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

// runCgroups lists the cgroup directories of a run's container, in every
// v1 hierarchy and in a v2 one.
func runCgroups(name string) []string {
	v1, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", runspec.CgroupParent, name))
	v2, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", runspec.CgroupParent, name))
	return append(v1, v2...)
}

// killCgroupProcs SIGKILLs every process in the cgroups and waits a little
// for them to leave.
func killCgroupProcs(cgs []string) {
	for try := 0; try < 50; try++ {
		alive := false
		for _, cg := range cgs {
			b, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					if p, err := os.FindProcess(pid); err == nil {
						p.Kill()
					}
					alive = true
				}
			}
		}
		if !alive {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reapRunContainer takes down what a dead process-isolated run left of
// its container outside the store: the runtime's record (the runtime
// kills what still runs), the processes and cgroups the runtime made
// before it died (it may die before it records the container), and the
// bundle.
func reapRunContainer(ctx context.Context, root, name string) error {
	rt := hostRuntime(root)
	state := filepath.Join(rt.StateDir, name)
	if _, err := os.Stat(state); err == nil {
		if err := rt.Delete(ctx, name); err != nil {
			slog.Info("the runtime could not delete a dead run's container: cleaning up after it", "name", name, "err", err)
		}
	}
	killCgroupProcs(runCgroups(name))
	var errs []error
	for _, cg := range runCgroups(name) {
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", cg, err))
		}
	}
	if err := os.RemoveAll(state); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(runBundlePath(root, name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
