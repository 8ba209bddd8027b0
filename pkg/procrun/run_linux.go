package procrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/inroot"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/store"
)

// Config is one process-isolated run.
type Config struct {
	// Store holds the container, the run's claim, bundle and the
	// runtime's state.
	Store *store.Store
	// Name names the run and its container.
	Name string
	// Image is the imported image the container is of.
	Image string
	// Container says how to create the container (its scratch).
	Container store.ContainerOptions
	// Spec is the run's OCI spec (package runspec). Run refuses the mounts
	// only a utility VM provides, resolves its user and command in the
	// root file system and sets its root.
	Spec *specs.Spec
	// Keep leaves the container, mounted, for inspection instead of
	// removing it.
	Keep bool
	// Runtime is the host's OCI runtime binary ("" finds one of
	// ociruntime.Candidates on PATH).
	Runtime string
	// Stdio is the container's standard streams.
	Stdio ociruntime.Stdio
	// Console, when the spec asks for a terminal, is the caller's
	// terminal: Supervise puts it in raw mode and the container's
	// follows its size. Nil otherwise.
	Console console.Console
	// StopTimeout is how long the container may take to exit after an
	// interrupt or SIGTERM before it is killed.
	StopTimeout time.Duration
	// Phase, when set, is called as each phase ends: create, mount, exec
	// and (unless Keep) teardown.
	Phase func(name string)
}

// Run runs the container of cfg to its end and tears it down, also when ctx
// is cancelled (the container is stopped by the signals Supervise
// forwards, not by ctx). It returns the container's exit status: its own,
// or 128+N when signal N ended it. A command missing from the image is an
// error that wraps ErrCommandNotFound.
func Run(ctx context.Context, cfg Config) (code int, err error) {
	phase := cfg.Phase
	if phase == nil {
		phase = func(string) {}
	}
	// What the spec asks for is checked before anything is created.
	if err := checkMounts(cfg.Spec); err != nil {
		return 0, err
	}
	s, name := cfg.Store, cfg.Name
	c, err := Create(ctx, s, name, cfg.Image, cfg.Container)
	if err != nil {
		return 0, err
	}
	phase("create")
	// Teardown runs even after Ctrl-C cancelled ctx.
	teardown := context.WithoutCancel(ctx)
	defer func() {
		err = errors.Join(err, c.End(teardown, cfg.Keep))
		if !cfg.Keep {
			phase("teardown")
		}
	}()
	rootfs, err := s.Mount(ctx, name)
	if err != nil {
		return 0, err
	}
	phase("mount")
	if !cfg.Keep {
		defer func() {
			if uerr := s.Unmount(teardown, name); uerr != nil {
				err = errors.Join(err, fmt.Errorf("unmount container %s: %w", name, uerr))
			}
		}()
	}
	if err := inroot.Resolve(cfg.Spec, inroot.Dir(rootfs)); err != nil {
		return 0, fmt.Errorf("image %s: %w", cfg.Image, err)
	}
	cfg.Spec.Root.Path = rootfs
	defer phase("exec")
	bundle := bundlePath(s.Root(), name)
	defer os.RemoveAll(bundle)
	p, err := hostRuntime(s.Root(), cfg.Runtime).Start(ctx, ociruntime.Container{ID: name, Bundle: bundle, Spec: cfg.Spec,
		Stdin: cfg.Stdio.Stdin, Stdout: cfg.Stdio.Stdout, Stderr: cfg.Stdio.Stderr})
	if err != nil {
		return 0, err
	}
	return Supervise(ctx, p, cfg.Console, cfg.StopTimeout)
}

// checkMounts refuses, before anything is created, the mounts that only a
// utility VM can provide, and makes binds ones the runtime takes.
func checkMounts(spec *specs.Spec) error {
	for i, m := range spec.Mounts {
		if runspec.RuntimeProvided(m) {
			continue
		}
		switch {
		case strings.HasPrefix(m.Source, runspec.SandboxPrefix):
			return fmt.Errorf("mount %d (%s -> %s): sandbox mounts live in a utility VM: use --isolation vm", i, m.Source, m.Destination)
		case m.Type == runspec.TypeBind || m.Type == "":
			if _, err := os.Stat(m.Source); err != nil {
				return fmt.Errorf("mount %d (%s -> %s): bind source: %w", i, m.Source, m.Destination, err)
			}
			// The runtime binds only what says so.
			spec.Mounts[i].Type = runspec.TypeBind
			if !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
				spec.Mounts[i].Options = append(slices.Clone(m.Options), "rbind")
			}
		case m.Type == runspec.TypeVirtualDisk || m.Type == runspec.TypePhysicalDisk:
			return fmt.Errorf("mount %d (%s -> %s): type %s needs --isolation vm", i, m.Source, m.Destination, m.Type)
		default:
			return fmt.Errorf("mount %d (%s -> %s): type %q is not supported", i, m.Source, m.Destination, m.Type)
		}
	}
	return nil
}
