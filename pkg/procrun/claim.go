package procrun

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

// claimPath is the lock a run holds while it owns its container.
func claimPath(root, name string) string { return filepath.Join(root, "runs", name+".lock") }

// bundlePath is where a run's OCI bundle (its config.json) is written.
func bundlePath(root, name string) string { return filepath.Join(root, "runs", name+".bundle") }

// claim takes the claim on the run name; release drops it.
func claim(root, name string) (release func(), err error) {
	p := claimPath(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	l, err := flock.Acquire(p)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	return func() { l.Remove() }, nil
}

// Container is the container of a run, claimed by this process: if the
// process dies before End, ReapDead removes it.
type Container struct {
	s       *store.Store
	name    string
	release func()
}

// Create claims the run name and creates its container, named name too, of
// the imported image. On an error nothing is left and the claim is dropped.
func Create(ctx context.Context, s *store.Store, name, image string, opts store.ContainerOptions) (*Container, error) {
	release, err := claim(s.Root(), name)
	if err != nil {
		return nil, err
	}
	if _, err := s.CreateContainer(ctx, name, image, opts); err != nil {
		release()
		return nil, err
	}
	return &Container{s: s, name: name, release: release}, nil
}

// End removes the container (unmounting it first) unless keep, then drops
// the claim: a kept container is an ordinary one from then on. It runs
// even when ctx is cancelled: pass context.WithoutCancel of the run's.
func (c *Container) End(ctx context.Context, keep bool) error {
	defer c.release()
	if keep {
		return nil
	}
	if err := c.s.RemoveContainer(ctx, c.name); err != nil {
		slog.Error("tear down container", "name", c.name, "err", err)
		return fmt.Errorf("tear down container %s: %w", c.name, err)
	}
	return nil
}

// ReapDead removes the containers of runs that died before their teardown,
// with what a process-isolated one left outside the store (see
// reapContainer), and returns their names. ociRuntime is the host's OCI
// runtime binary, as Config.Runtime ("" finds one on PATH).
func ReapDead(ctx context.Context, s *store.Store, ociRuntime string) ([]string, error) {
	ps, _ := filepath.Glob(filepath.Join(s.Root(), "runs", "*.lock"))
	var reaped []string
	var errs []error
	for _, p := range ps {
		l, ok, err := flock.TryAcquire(p)
		if err != nil || !ok {
			continue // the run is alive
		}
		name := strings.TrimSuffix(filepath.Base(p), ".lock")
		if rerr := reapContainer(ctx, s.Root(), ociRuntime, name); rerr != nil {
			errs = append(errs, fmt.Errorf("container %s of a dead run: %w", name, rerr))
			l.Release()
			continue
		}
		err = s.RemoveContainer(ctx, name)
		switch {
		case err == nil:
			reaped = append(reaped, name)
			l.Remove()
		case errors.Is(err, store.ErrNotFound):
			l.Remove() // died before creating it, or after removing it
		default:
			errs = append(errs, fmt.Errorf("container %s of a dead run: %w", name, err))
			l.Release()
		}
	}
	return reaped, errors.Join(errs...)
}

// hostRuntime is the OCI runtime of process-isolated runs, with its state
// under the store's root so ReapDead finds what a dead run left.
func hostRuntime(root, binary string) *ociruntime.Runtime {
	return &ociruntime.Runtime{Binary: binary, StateDir: filepath.Join(root, "runtime")}
}

// cgroups lists the cgroup directories of a run's container, in every v1
// hierarchy and in a v2 one.
func cgroups(name string) []string {
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

// reapContainer takes down what a dead process-isolated run left of its
// container outside the store: the runtime's record (the runtime kills
// what still runs), the processes and cgroups the runtime made before it
// died (it may die before it records the container), and the bundle.
func reapContainer(ctx context.Context, root, ociRuntime, name string) error {
	rt := hostRuntime(root, ociRuntime)
	state := filepath.Join(rt.StateDir, name)
	if _, err := os.Stat(state); err == nil {
		if err := rt.Delete(ctx, name); err != nil {
			slog.Info("the runtime could not delete a dead run's container: cleaning up after it", "name", name, "err", err)
		}
	}
	killCgroupProcs(cgroups(name))
	var errs []error
	for _, cg := range cgroups(name) {
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", cg, err))
		}
	}
	if err := os.RemoveAll(state); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(bundlePath(root, name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
