// Package ociruntime runs a container from an OCI bundle with an OCI
// runtime CLI (crun, else runc) through containerd's go-runc: the runtime
// makes the namespaces, cgroups, seccomp filter, capabilities and /dev the
// spec asks for; this package writes the bundle, wires stdio (pipes or a
// pseudo-terminal of the container's own, never the caller's terminal),
// forwards signals and reports the exit status. The CLI uses it on the host
// and the guest agent inside a utility VM.
package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Candidates are the runtimes looked for on PATH, in order of preference.
// runc first: Debian 12's crun (1.8.1) refuses hosts whose cgroup v2
// hierarchy holds a controller beside v1 ones ("cgroups in hybrid mode not
// supported"), as this one does.
var Candidates = []string{"runc", "crun"}

// Runtime is one OCI runtime CLI with its own state directory.
type Runtime struct {
	// Binary is the runtime's path; "" finds one of Candidates on PATH.
	Binary string
	// StateDir is the runtime's --root: containers started here are
	// listed and deleted only through it.
	StateDir string
	// NoPivot moves the root instead of pivot_root, which an initramfs
	// root (the utility VM's) refuses.
	NoPivot bool
}

// Find returns the path of the first runtime of Candidates on PATH.
func Find() (string, error) {
	for _, c := range Candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no OCI runtime found on PATH (looked for %v): install crun or runc", Candidates)
}

func (r *Runtime) cli() (*runc.Runc, error) {
	bin := r.Binary
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	// Its own process group: a Ctrl-C on the caller's terminal reaches
	// the caller, which forwards it, not the runtime as well. It dies with
	// its caller (the container is reaped by gc then).
	return &runc.Runc{Command: bin, Root: r.StateDir, Setpgid: true, PdeathSignal: syscall.SIGKILL}, nil
}

// Container is one container to run.
type Container struct {
	ID     string
	Bundle string // a directory; its config.json is written from Spec
	Spec   *specs.Spec
	// Stdin is copied to the container (nil: the container's stdin is
	// empty). Stdout and Stderr receive its output; with a terminal
	// (Spec.Process.Terminal) all output arrives on Stdout.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Process is a started container.
type Process struct {
	rt      *runc.Runc
	id      string
	pid     int
	console console.Console
	done    chan struct{}
	status  int
	err     error
	copies  sync.WaitGroup
	cleanup []func()
	// target is what signals reach, by a handle Go backs with a pidfd
	// (never a reused pid): a container's init, or an exec'd process,
	// by the pid the runtime wrote. Nil when it wrote none: a container's
	// init is then signalled through the runtime (`crun kill`, a process
	// start: ~0.5 s in a TCG guest).
	target  *os.Process
	initPid int
}

// WriteBundle writes the spec as the bundle's config.json.
func WriteBundle(bundle string, spec *specs.Spec) error {
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("bundle %s: %w", bundle, err)
	}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return fmt.Errorf("bundle %s: %w", bundle, err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("bundle %s: %w", bundle, err)
	}
	return nil
}

// Start writes the bundle and starts the container. It returns once the
// container's process exists; Wait gives its exit status.
func (r *Runtime) Start(ctx context.Context, c Container) (_ *Process, err error) {
	if c.Spec == nil || c.Spec.Process == nil {
		return nil, fmt.Errorf("container %s: spec has no process", c.ID)
	}
	rt, err := r.cli()
	if err != nil {
		return nil, err
	}
	if err := WriteBundle(c.Bundle, c.Spec); err != nil {
		return nil, err
	}
	p := &Process{rt: rt, id: c.ID, done: make(chan struct{})}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	stdio := Stdio{Stdin: c.Stdin, Stdout: c.Stdout, Stderr: c.Stderr}
	rio, err := p.newIO(c.Spec.Process, stdio)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	pidFile := filepath.Join(c.Bundle, "init.pid")
	os.Remove(pidFile) // a previous run's
	opts := &runc.CreateOpts{NoPivot: r.NoPivot, IO: rio, PidFile: pidFile}
	started := make(chan int, 1)
	opts.Started = started
	// The runtime process must not die with ctx: a cancelled run is
	// stopped by signals (Stop), so the container can clean up.
	go func() {
		defer close(p.done)
		p.status, p.err = rt.Run(context.WithoutCancel(ctx), c.ID, c.Bundle, opts)
		var ee *runc.ExitError
		if errors.As(p.err, &ee) {
			p.err = nil // the container's own status
		}
	}()
	pid, ok := <-started
	if !ok {
		<-p.done
		return nil, fmt.Errorf("container %s: start %s: %w", c.ID, rt.Command, p.err)
	}
	p.pid = pid
	// The runtime process exists before the container does: signals and
	// state queries work once the runtime has recorded it.
	r.waitRecorded(c.ID, p.done)
	// The pid is read while the runtime runs, so the init it names has
	// not been reaped by it yet, or only just (a pid is reused only
	// after the kernel has cycled through all the others).
	// A runtime that wrote no pid file is not waited for long: the
	// container is then signalled and asked about through the runtime.
	if pid := waitPidFile(pidFile, p.done, time.After(initPidWait)); pid > 0 {
		p.initPid = pid
		p.setTarget(pid)
	}
	p.relay(rio, stdio)
	return p, nil
}

// Stdio is a process's standard streams. Stdin (nil: empty) is copied
// to it; Stdout and Stderr receive its output, all of it on Stdout with a
// terminal.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// newIO makes the runtime's stdio for proc: a terminal relay or pipes.
func (p *Process) newIO(proc *specs.Process, stdio Stdio) (runc.IO, error) {
	if proc.Terminal {
		// The runtime, in the foreground, gives the container a
		// pseudo-terminal of its own and relays it to its stdio: a second
		// one, made here, whose master stays with us. The caller's
		// terminal never reaches the container.
		ttyIO, err := newTerminalIO(proc.ConsoleSize)
		if err != nil {
			return nil, err
		}
		p.cleanup = append(p.cleanup, func() { ttyIO.Close() })
		p.console = ttyIO.master
		return ttyIO, nil
	}
	pio, err := runc.NewPipeIO(0, 0, func(o *runc.IOOption) { o.OpenStdin = stdio.Stdin != nil })
	if err != nil {
		return nil, fmt.Errorf("stdio pipes: %w", err)
	}
	p.cleanup = append(p.cleanup, func() { pio.Close() })
	return pio, nil
}

// relay copies stdio to and from the started runtime.
func (p *Process) relay(rio runc.IO, stdio Stdio) {
	if stdio.Stdout != nil && stdio.Stdout == stdio.Stderr {
		// One writer for both streams (as exec.Cmd allows): its writes
		// come from two copiers.
		w := &lockedWriter{w: stdio.Stdout}
		stdio.Stdout, stdio.Stderr = w, w
	}
	if ttyIO, ok := rio.(*terminalIO); ok {
		ttyIO.slave.Close() // the runtime has its copy
		if stdio.Stdin != nil {
			go io.Copy(p.console, stdio.Stdin)
		}
		p.copy(stdio.Stdout, p.console)
		return
	}
	if c, ok := rio.(runc.StartCloser); ok {
		c.CloseAfterStart()
	}
	if stdio.Stdin != nil {
		go func() {
			io.Copy(rio.Stdin(), stdio.Stdin)
			rio.Stdin().Close()
		}()
	}
	p.copy(stdio.Stdout, rio.Stdout())
	p.copy(stdio.Stderr, rio.Stderr())
}

// Exec runs proc in the running container id with the runtime's exec, in
// the foreground: stdio as Start's (with proc.Terminal, a terminal of its
// own relayed to Stdout). It returns once the process exists; Signal and
// Resize reach it, not the container's init, and Wait gives its exit
// status. The runtime waits for the process, so it is never an orphan for
// the caller to reap.
func (r *Runtime) Exec(ctx context.Context, id string, proc specs.Process, stdio Stdio) (_ *Process, err error) {
	if len(proc.Args) == 0 {
		return nil, fmt.Errorf("exec in container %s: no command", id)
	}
	rt, err := r.cli()
	if err != nil {
		return nil, err
	}
	p := &Process{rt: rt, id: id, done: make(chan struct{})}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	dir, err := os.MkdirTemp("", "oci-exec-")
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", id, err)
	}
	p.cleanup = append(p.cleanup, func() { os.RemoveAll(dir) })
	pidFile := filepath.Join(dir, "pid")
	rio, err := p.newIO(&proc, stdio)
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", id, err)
	}
	started := make(chan int, 1)
	opts := &runc.ExecOpts{IO: rio, PidFile: pidFile, Started: started}
	go func() {
		defer close(p.done)
		// As Run: a cancelled exec is ended by signals, not by killing
		// the runtime.
		p.err = rt.Exec(context.WithoutCancel(ctx), id, proc, opts)
		var ee *runc.ExitError
		if errors.As(p.err, &ee) {
			p.status, p.err = ee.Status, nil // the process's own status
		}
	}()
	pid, ok := <-started
	if !ok {
		<-p.done
		return nil, fmt.Errorf("exec in container %s: %s: %w", id, rt.Command, p.err)
	}
	p.pid = pid
	// Signals go to the exec'd process, whose pid the runtime writes once
	// it exists.
	if pid := waitPidFile(pidFile, p.done, nil); pid > 0 {
		p.setTarget(pid)
	}
	p.relay(rio, stdio)
	return p, nil
}

// setTarget opens the process signals go to. The runtime waits for it,
// so until the runtime exits (done) the pid is not reused.
func (p *Process) setTarget(pid int) {
	if t, err := os.FindProcess(pid); err == nil {
		p.target = t
		p.cleanup = append(p.cleanup, func() { t.Release() })
	}
}

// initPidWait bounds Start's wait for the init's pid file, once the
// runtime has recorded the container.
const initPidWait = 5 * time.Second

// waitPidFile waits for the runtime to write the pid file: 0 when the
// runtime exited first, or giveUp (nil: never) fired.
func waitPidFile(name string, exited <-chan struct{}, giveUp <-chan time.Time) int {
	for delay := 100 * time.Microsecond; ; delay = min(delay*2, 10*time.Millisecond) {
		if b, err := os.ReadFile(name); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid
			}
		}
		select {
		case <-exited:
			return 0
		case <-giveUp:
			return 0
		case <-time.After(delay):
		}
	}
}

// Pause freezes every process of the container.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	rt, err := r.cli()
	if err != nil {
		return err
	}
	if err := rt.Pause(ctx, id); err != nil {
		return fmt.Errorf("pause container %s: %w", id, err)
	}
	return nil
}

// Resume thaws a paused container.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	rt, err := r.cli()
	if err != nil {
		return err
	}
	if err := rt.Resume(ctx, id); err != nil {
		return fmt.Errorf("resume container %s: %w", id, err)
	}
	return nil
}

// Update changes the container's resource limits (its cgroup).
func (r *Runtime) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	rt, err := r.cli()
	if err != nil {
		return err
	}
	if err := rt.Update(ctx, id, res); err != nil {
		return fmt.Errorf("update the resources of container %s: %w", id, err)
	}
	return nil
}

// State is what the runtime reports of a container.
type State struct {
	Pid    int    // its init, in the runtime's PID namespace
	Status string // "created", "running", "paused", "stopped"
}

// State asks the runtime for the container's state.
func (r *Runtime) State(ctx context.Context, id string) (State, error) {
	rt, err := r.cli()
	if err != nil {
		return State{}, err
	}
	c, err := rt.State(ctx, id)
	if err != nil {
		return State{}, fmt.Errorf("state of container %s: %w", id, err)
	}
	return State{Pid: c.Pid, Status: c.Status}, nil
}

// waitRecorded waits until the runtime has written the container's state
// (runc: state.json, crun: status) or has exited (a container that ended
// at once, or never started: Wait tells).
func (r *Runtime) waitRecorded(id string, exited <-chan struct{}) {
	dir := filepath.Join(r.StateDir, id)
	if r.StateDir == "" {
		return // the runtime's default root: not ours to look into
	}
	for delay := 100 * time.Microsecond; ; delay = min(delay*2, 10*time.Millisecond) {
		for _, f := range []string{"state.json", "status"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				return
			}
		}
		select {
		case <-exited:
			return
		case <-time.After(delay):
		}
	}
}

func (p *Process) copy(w io.Writer, r io.Reader) {
	if w == nil {
		w = io.Discard
	}
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		io.Copy(w, r)
	}()
}

func (p *Process) close() {
	for i := len(p.cleanup) - 1; i >= 0; i-- {
		p.cleanup[i]()
	}
	p.cleanup = nil
}

// Pid is the runtime process's pid (the container's init is its child).
func (p *Process) Pid() int { return p.pid }

// InitPid is a container's init's pid, in the caller's PID namespace, as
// the runtime wrote it at the start (0 for an exec, or when the runtime
// ended before writing it). It names the init only until Done is closed.
func (p *Process) InitPid() int { return p.initPid }

// Done is closed when the container has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// drainTimeout bounds the wait for a terminal's last output once the
// runtime has exited.
const drainTimeout = 2 * time.Second

// Wait waits for the container to exit and its output to drain, and
// returns its exit status: the code it exited with, or 128+N when signal
// N ended it (137 for SIGKILL, as after an OOM kill).
func (p *Process) Wait() (int, error) {
	<-p.done
	if p.console != nil {
		// The terminal's output ends with EIO once the runtime's side is
		// closed (it exited): what it wrote before is read first. A
		// process that kept the side open is not waited for long.
		copied := make(chan struct{})
		go func() { p.copies.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(drainTimeout):
		}
		p.console.Close()
	}
	p.copies.Wait()
	p.close()
	return p.status, p.err
}

// Signal sends sig to the container's init (or to the exec'd process).
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	kill := func() error { return p.rt.Kill(ctx, p.id, int(sig), nil) }
	if p.target != nil {
		kill = func() error {
			if err := p.target.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
				return err
			}
			return nil
		}
	}
	if err := kill(); err != nil {
		select {
		case <-p.done: // it exited meanwhile
			return nil
		default:
		}
		return fmt.Errorf("container %s: signal %v: %w", p.id, sig, err)
	}
	return nil
}

// Stop sends sig, and SIGKILL when the container has not exited after
// timeout.
func (p *Process) Stop(ctx context.Context, sig syscall.Signal, timeout time.Duration) error {
	if err := p.Signal(ctx, sig); err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return p.Signal(ctx, syscall.SIGKILL)
	}
}

// Resize sets the container's terminal size; without a terminal it does
// nothing. The runtime passes the size on when told by SIGWINCH.
func (p *Process) Resize(ws console.WinSize) error {
	if p.console == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil // nothing to tell any more
	default:
	}
	if err := p.console.Resize(ws); err != nil {
		select {
		case <-p.done: // it exited meanwhile
			return nil
		default:
		}
		return err
	}
	select {
	case <-p.done:
		return nil
	default:
		return sendWinch(p.pid)
	}
}

// Delete force-deletes a container left in the runtime's state, killing
// what still runs in it (gc after a run that died).
func (r *Runtime) Delete(ctx context.Context, id string) error {
	rt, err := r.cli()
	if err != nil {
		return err
	}
	if err := rt.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return nil
}

// List names the containers in the runtime's state directory.
func (r *Runtime) List(ctx context.Context) ([]string, error) {
	if _, err := os.Stat(r.StateDir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	rt, err := r.cli()
	if err != nil {
		return nil, err
	}
	cs, err := rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers in %s: %w", r.StateDir, err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids, nil
}

// terminalIO is a pseudo-terminal pair: the runtime gets the slave as
// its stdio, we keep the master.
type terminalIO struct {
	master console.Console
	slave  *os.File
}

func (t *terminalIO) Close() error {
	t.slave.Close()
	return t.master.Close()
}
func (t *terminalIO) Stdin() io.WriteCloser { return nil }
func (t *terminalIO) Stdout() io.ReadCloser { return nil }
func (t *terminalIO) Stderr() io.ReadCloser { return nil }
func (t *terminalIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = t.slave, t.slave, t.slave
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
