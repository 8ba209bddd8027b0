//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/console"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/internal/inroot"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/procrun"
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
	entrypoint  string
	interactive bool
	stopTimeout time.Duration
	confine     runspec.Confinement
	openStore   func() (*store.Store, error)
}

func newRunCmd(global *options) *cobra.Command {
	o := runOptions{openStore: global.openStore}
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [-- CMD [ARGS...]]",
		Short: "Run a container of an image with an OCI runtime, then tear it down",
		Long: `run imports IMAGE if it is a path (OCI layout directory or archive) rather than
an imported image name, creates a container, mounts its root file system and runs
it with an OCI runtime (runc), streams its output and exits with its exit code:
the container's own, or 128+N when signal N ended it (137 after SIGKILL or an
OOM kill). Everything is torn down afterwards, also on Ctrl-C.

The command is the image's Entrypoint + Cmd; a command after "--" replaces Cmd.
Env, WorkingDir and User come from the image too. Precedence, as in ctr and
nerdctl: containerd's default spec (default capabilities, masked and read-only
/proc paths, the standard /dev nodes, no-new-privileges) with containerd's
default seccomp profile, then the image's config, then --spec, then the flags.

--isolation process (default) runs the container on the host: new mount, PID,
UTS, IPC and network namespaces (only lo), cgroup /layervisor/<name>.
--isolation vm assembles the root file system inside a utility VM and runs the
same spec there with the same runtime, driven by the guest agent.

Stdio: without -t the container gets pipes, never the caller's terminal, and no
controlling terminal; -t gives it a pseudo-terminal of its own, sized and
resized with the caller's window. Without -i its stdin is empty.
Ctrl-C and SIGTERM are forwarded to the container's init; if it has not exited
--stop-timeout later, it is killed.

Mounts: -v HOST:CONTAINER[:ro] binds a host directory or file; --mount takes
type=bind|sandbox|virtual-disk|physical-disk,source=…,target=…[,readonly]
[,format=raw|vhd|vhdx] (sandbox: a directory inside the utility VM, shared by
the containers in it; disks: attached over SCSI). Binds work in both modes;
sandbox and disk mounts need --isolation vm. Read-only is enforced by the host.

--spec config.json takes an OCI runtime spec: process (args, env, cwd, user,
terminal, capabilities), mounts (those the runtime makes anyway are skipped),
hostname, root.readonly and linux.resources.`,
		Example: `  layervisor run demo:latest
  layervisor run -it demo:latest -- sh
  layervisor run --isolation vm ./demo.tar -- ls -l /
  layervisor run -u nobody --memory 64m --pids-limit 100 --cap-drop ALL demo:latest -- id
  layervisor run --network host --read-only demo:latest -- ip addr
  layervisor run -v /srv/data:/data:ro demo:latest -- ls /data
  layervisor run --isolation vm --mount type=virtual-disk,source=/var/disks/d.vhdx,target=/d demo:latest -- df /d`,
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
			if o.confine.TTY && !term.IsTerminal(int(os.Stdin.Fd())) {
				return errors.New("-t: standard input is not a terminal (drop -t, or run from a terminal)")
			}
			if o.stopTimeout < 0 {
				return fmt.Errorf("--stop-timeout %v: must not be negative", o.stopTimeout)
			}
			o.timer = newPhaseTimer()
			code, err := runContainer(cmd.Context(), o, args[0], args[1:])
			if o.timings {
				o.timer.print()
			}
			if errors.Is(err, inroot.ErrCommandNotFound) || agent.IsCode(err, agent.CodeExecNotFound) {
				// As a shell says it: 127.
				fmt.Fprintln(os.Stderr, "layervisor:", err)
				return exitError{127}
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
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable; replaces the image's)")
	f.StringVarP(&o.cwd, "workdir", "w", "", "working directory inside the container (default: the image's, else /)")
	f.StringVar(&o.entrypoint, "entrypoint", "", "replace the image's Entrypoint with this command")
	f.StringVar(&o.specFile, "spec", "", "OCI runtime spec (config.json) to take the process, mounts and resources from")
	f.StringArrayVarP(&o.volumes, "volume", "v", nil, "bind mount HOST:CONTAINER[:ro] (repeatable)")
	f.StringArrayVar(&o.mounts, "mount", nil, "mount type=bind|sandbox|virtual-disk|physical-disk,source=…,target=…[,readonly][,format=…] (repeatable)")
	f.BoolVar(&o.timings, "timings", false, "print how long each phase took (import, create, boot, attach, combine, exec, teardown) on stderr")
	f.StringVarP(&o.confine.User, "user", "u", "", "user[:group] to run as: a name or id from the image's /etc/passwd and /etc/group (default: the image's USER, else root)")
	f.BoolVarP(&o.confine.TTY, "tty", "t", false, "give the container a pseudo-terminal of its own")
	f.BoolVarP(&o.interactive, "interactive", "i", false, "keep stdin open: copy it to the container")
	f.StringVar(&o.confine.Network, "network", runspec.NetworkNone, "none (a network namespace with only lo) or host")
	f.StringVar(&o.confine.Hostname, "hostname", "", "the container's hostname (default: its name)")
	f.StringVarP(&o.confine.Memory, "memory", "m", "", "memory limit, e.g. 64m or 1g (at least 6m); the container is OOM-killed above it")
	f.Float64Var(&o.confine.CPUs, "cpus", 0, "CPU limit in CPUs, e.g. 0.5")
	f.Int64Var(&o.confine.PidsLimit, "pids-limit", 0, "most processes and threads the container may have")
	f.BoolVar(&o.confine.ReadOnly, "read-only", false, "mount the container's root file system read-only")
	f.StringSliceVar(&o.confine.CapAdd, "cap-add", nil, "add capabilities (e.g. NET_ADMIN, or ALL)")
	f.StringSliceVar(&o.confine.CapDrop, "cap-drop", nil, "drop capabilities (e.g. NET_RAW, or ALL)")
	f.StringArrayVar(&o.confine.SecurityOpts, "security-opt", nil, "seccomp=unconfined, seccomp=PROFILE.json (OCI format), no-new-privileges[=false]")
	f.DurationVar(&o.stopTimeout, "stop-timeout", 10*time.Second, "after Ctrl-C or SIGTERM, how long the container may take to exit before it is killed")
	return cmd
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

// runContainer runs the command of image in a new container, process
// isolated (package procrun) or in a utility VM (runInUVM), and returns
// its exit status.
func runContainer(ctx context.Context, o runOptions, image string, cmdArgs []string) (code int, err error) {
	switch o.isolation {
	case "process", "vm":
	default:
		return 0, fmt.Errorf("--isolation %q: want process or vm", o.isolation)
	}
	size, err := parseSize(o.scratchSize)
	if err != nil {
		return 0, fmt.Errorf("--scratch-size: %w", err)
	}
	format, err := scratch.ParseFormat(o.scratchFmt)
	if err != nil {
		return 0, err
	}
	if format == diskformat.VHDX && o.isolation != "vm" {
		return 0, fmt.Errorf("--scratch-format vhdx needs --isolation vm: %w", layers.ErrVHDXScratchOnHost)
	}
	s, err := o.openStore()
	if err != nil {
		return 0, err
	}
	name, err := resolveImage(ctx, s, image)
	if err != nil {
		return 0, err
	}
	im, err := s.Image(name)
	if err != nil {
		return 0, err
	}
	o.timer.mark("import")
	cname := randomName("run-")
	// Everything the flags and the image decide is checked before anything
	// is created.
	spec, err := buildRunSpec(o, cname, im, cmdArgs)
	if err != nil {
		return 0, err
	}
	if o.confine.TTY {
		if ws, err := console.Current().Size(); err == nil {
			spec.Process.ConsoleSize = &specs.Box{Height: uint(ws.Height), Width: uint(ws.Width)}
		}
	}
	copts := store.ContainerOptions{ScratchSize: size, ScratchFormat: format}
	if o.isolation == "vm" {
		return runInUVM(ctx, s, o, name, cname, copts, spec)
	}
	return procrun.Run(ctx, procrun.Config{Store: s, Name: cname, Image: name, Container: copts, Spec: spec,
		Keep: o.keep, Runtime: envconfig.OCIRuntime(), Stdio: runStdio(o), Console: callerTTY(o),
		StopTimeout: o.stopTimeout, Phase: o.timer.mark})
}

// buildRunSpec is the run's OCI spec from the image's config and the flags.
func buildRunSpec(o runOptions, cname string, im *store.Image, cmdArgs []string) (*specs.Spec, error) {
	cfg := im.Config
	if o.entrypoint != "" {
		c := ocispec.ImageConfig{}
		if cfg != nil {
			c = *cfg
		}
		c.Entrypoint, c.Cmd = []string{o.entrypoint}, nil
		cfg = &c
	}
	return runspec.Build(runspec.Flags{ID: cname, Image: cfg, SpecFile: o.specFile, Args: cmdArgs,
		Env: o.env, Cwd: o.cwd, Volumes: o.volumes, Mounts: o.mounts, Confinement: o.confine})
}

// runStdio is the container's stdio: the caller's stdout and stderr, and
// its stdin with -i (or a terminal, which -t forwards keystrokes from),
// else nothing.
func runStdio(o runOptions) ociruntime.Stdio {
	stdio := ociruntime.Stdio{Stdout: os.Stdout, Stderr: os.Stderr}
	if o.interactive || o.confine.TTY {
		stdio.Stdin = os.Stdin
	}
	return stdio
}

// callerTTY is the caller's terminal with -t, which the run puts in raw
// mode and sizes the container's after; nil without -t (or when stdin is
// not a console after all).
func callerTTY(o runOptions) console.Console {
	if !o.confine.TTY {
		return nil
	}
	con, err := console.ConsoleFromFile(os.Stdin)
	if err != nil {
		return nil
	}
	return con
}
