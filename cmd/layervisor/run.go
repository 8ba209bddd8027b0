package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/hostrun"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/store"
)

// phaseTimer collects how long each phase of a run took.
type phaseTimer struct {
	phases []string
	times  map[string]time.Duration
	last   time.Time
}

func newPhaseTimer() *phaseTimer {
	return &phaseTimer{times: map[string]time.Duration{}, last: time.Now()}
}

// add records d for phase.
func (p *phaseTimer) add(phase string, d time.Duration) {
	if _, ok := p.times[phase]; !ok {
		p.phases = append(p.phases, phase)
	}
	p.times[phase] += d
}

// mark records the time since the previous mark as phase.
func (p *phaseTimer) mark(phase string) {
	now := time.Now()
	p.add(phase, now.Sub(p.last))
	p.last = now
}

func (p *phaseTimer) print() {
	var total time.Duration
	for _, ph := range p.phases {
		fmt.Fprintf(os.Stderr, "%-10s %8.1f ms\n", ph, float64(p.times[ph].Microseconds())/1000)
		if ph != "attach" && ph != "combine" {
			total += p.times[ph]
		}
	}
	fmt.Fprintf(os.Stderr, "%-10s %8.1f ms\n", "total", float64(total.Microseconds())/1000)
}

type runOptions struct {
	timings     bool
	timer       *phaseTimer
	isolation   string
	uvmID       string
	scratchSize string
	scratchFmt  string
	keep        bool
	env         []string
	cwd         string
	specFile    string
	volumes     []string
	mounts      []string
	cold        bool
	layerDevice string
	device      layers.LayerDevice
}

func init() {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [-- CMD [ARGS...]]",
		Short: "Run a command in a fresh container of an image, then tear it down",
		Long: `run imports IMAGE if it is a path (OCI layout directory or archive) rather than
an imported image name, creates a container, mounts its root file system, runs
CMD with that root as "/", streams its output and exits with its exit code.
Everything is torn down afterwards, also on Ctrl-C.

--isolation process (default) runs CMD on the host in new mount, PID, UTS and
IPC namespaces. --isolation vm assembles the root file system inside a utility
VM and runs CMD there through the guest agent.

Mounts: -v HOST:CONTAINER[:ro] binds a host directory or file; --mount takes
type=bind|sandbox|virtual-disk|physical-disk,source=…,target=…[,readonly]
[,format=raw|vhd|vhdx] (sandbox: a directory inside the utility VM, shared by
the containers in it; disks: attached over SCSI). Binds work in both modes;
sandbox and disk mounts need --isolation vm. Read-only is enforced by the host.

--spec config.json takes an OCI runtime spec: process.args, env and cwd, and
its mounts (the /proc, /dev, /sys, cgroup mounts of "runc spec" are provided
anyway and skipped). A command after "--", -e and -w override the spec's.

A command that does not exist in the image exits with 127.`,
		Example: `  layervisor run demo:latest -- sh -c 'cat /etc/os-release'
  layervisor run --isolation vm ./demo.tar -- ls -l /
  layervisor run -v /srv/data:/data:ro demo:latest -- ls /data
  layervisor run --isolation vm --mount type=virtual-disk,source=/var/disks/d.vhdx,target=/d demo:latest -- df /d
  layervisor run --spec config.json demo:latest`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash != 1 && !(dash == -1 && len(args) == 1) {
				return fmt.Errorf("usage: layervisor run [flags] IMAGE [-- CMD [ARGS...]]")
			}
			var err error
			if o.device, err = layers.ParseLayerDevice(o.layerDevice); err != nil {
				return fmt.Errorf("--layer-device: %w", err)
			}
			spec, err := runspec.Build(runspec.Flags{SpecFile: o.specFile, Args: args[1:], Env: o.env,
				Cwd: o.cwd, Volumes: o.volumes, Mounts: o.mounts})
			if err != nil {
				return err
			}
			o.timer = newPhaseTimer()
			code, err := runContainer(cmd.Context(), o, args[0], spec)
			if o.timings {
				o.timer.print()
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.isolation, "isolation", "process", "process (host namespaces) or vm (utility VM)")
	f.StringVar(&o.uvmID, "uvm", "", "with --isolation vm: use this running utility VM instead of starting one")
	f.BoolVar(&o.cold, "cold", false, "with --isolation vm: boot the utility VM's kernel instead of restoring a template")
	f.StringVar(&o.layerDevice, "layer-device", string(layers.LayerDeviceSCSI), "with --isolation vm: scsi (read-only disks: attach fastest) or vpmem (persistent memory, SCSI when VPMEM is full)")
	f.StringVar(&o.scratchSize, "scratch-size", "1G", "scratch virtual size")
	f.StringVar(&o.scratchFmt, "scratch-format", "raw", "scratch disk format: raw, or vhdx (with --isolation vm)")
	f.BoolVar(&o.keep, "keep", false, "keep the container afterwards (for inspection)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&o.cwd, "workdir", "w", "", "working directory inside the container (default: the spec's, else /)")
	f.StringVar(&o.specFile, "spec", "", "OCI runtime spec (config.json): process args/env/cwd and mounts")
	f.StringArrayVarP(&o.volumes, "volume", "v", nil, "bind mount HOST:CONTAINER[:ro] (repeatable)")
	f.StringArrayVar(&o.mounts, "mount", nil, "mount type=bind|sandbox|virtual-disk|physical-disk,source=…,target=…[,readonly][,format=…] (repeatable)")
	f.BoolVar(&o.timings, "timings", false, "print how long each phase took (import, create, boot, attach, combine, exec, teardown) on stderr")
	rootCmd.AddCommand(cmd)
}

// resolveImage returns the name of an imported image, importing ref first
// when it is a path on disk rather than a known image name.
func resolveImage(ctx context.Context, s *store.Store, ref string) (string, error) {
	if _, err := s.Image(ref); err == nil {
		return ref, nil
	}
	if _, err := os.Stat(ref); err != nil {
		return "", fmt.Errorf("image %q is neither an imported image nor a path to one", ref)
	}
	res, err := s.Import(ctx, ref, store.ImportOptions{})
	if err != nil {
		return "", err
	}
	return res.Image.Name, nil
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func runContainer(ctx context.Context, o runOptions, image string, spec *specs.Spec) (code int, err error) {
	switch o.isolation {
	case "process":
		if err := checkProcessMounts(spec); err != nil {
			return 0, err
		}
	case "vm":
	default:
		return 0, fmt.Errorf("--isolation %q: want process or vm", o.isolation)
	}
	size, err := parseSize(o.scratchSize)
	if err != nil {
		return 0, fmt.Errorf("--scratch-size: %w", err)
	}
	s, err := openStore()
	if err != nil {
		return 0, err
	}
	name, err := resolveImage(ctx, s, image)
	if err != nil {
		return 0, err
	}
	o.timer.mark("import")
	cname := randomName("run-")
	release, err := claimRun(s.Root(), cname) // gc removes the container if this run dies
	if err != nil {
		return 0, err
	}
	defer release()
	format, err := scratch.ParseFormat(o.scratchFmt)
	if err != nil {
		return 0, err
	}
	if format == scratch.VHDX && o.isolation != "vm" {
		return 0, fmt.Errorf("--scratch-format vhdx needs --isolation vm: %w", layers.ErrVHDXScratchOnHost)
	}
	if _, err := s.CreateContainer(ctx, cname, name, store.ContainerOptions{ScratchSize: size, ScratchFormat: format}); err != nil {
		return 0, err
	}
	o.timer.mark("create")
	// Teardown runs even after Ctrl-C cancelled ctx.
	teardown := context.WithoutCancel(ctx)
	if !o.keep {
		defer func() {
			defer o.timer.mark("teardown")
			if rerr := s.RemoveContainer(teardown, cname); rerr != nil {
				slog.Error("tear down container", "name", cname, "err", rerr)
				err = errors.Join(err, rerr)
			}
		}()
	}
	switch o.isolation {
	case "process":
		rootfs, err := s.Mount(ctx, cname)
		if err != nil {
			return 0, err
		}
		o.timer.mark("mount")
		if !o.keep {
			defer func() {
				if uerr := s.Unmount(teardown, cname); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}()
		}
		defer o.timer.mark("exec")
		p := spec.Process
		return hostrun.Run(ctx, hostrun.Options{
			Rootfs: rootfs, Args: p.Args, Env: p.Env, Cwd: p.Cwd, Mounts: hostMounts(spec),
			Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		})
	default:
		return runInUVM(ctx, s, o, cname, spec)
	}
}

// checkProcessMounts refuses, before anything is created, the mounts that
// only a utility VM can provide.
func checkProcessMounts(spec *specs.Spec) error {
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
		case m.Type == runspec.TypeVirtualDisk || m.Type == runspec.TypePhysicalDisk:
			return fmt.Errorf("mount %d (%s -> %s): type %s needs --isolation vm", i, m.Source, m.Destination, m.Type)
		default:
			return fmt.Errorf("mount %d (%s -> %s): type %q is not supported", i, m.Source, m.Destination, m.Type)
		}
	}
	return nil
}

// hostMounts are the bind mounts of a process-isolated run.
func hostMounts(spec *specs.Spec) []hostrun.Mount {
	var out []hostrun.Mount
	for _, m := range spec.Mounts {
		if !runspec.RuntimeProvided(m) {
			out = append(out, hostrun.Mount{Source: m.Source, Target: m.Destination, ReadOnly: runspec.ReadOnly(m)})
		}
	}
	return out
}
