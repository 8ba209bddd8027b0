package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	eventstypes "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/undo"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vmcontainer"
)

// stdioTimeout bounds opening a task's stdio FIFOs (the client opened its
// ends before asking for the task).
const stdioTimeout = 10 * time.Second

// Service is the containerd.task.v2.Task service of one shim: one task
// (the shim's id) in one utility VM. Safe for concurrent use.
type Service struct {
	ctx      context.Context // the daemon's: outlives requests
	ns, id   string
	root     string
	pub      *publisher
	shutdown func()

	// Config for the UVMs this service makes (Root and ID are set per task).
	UVMConfig uvm.Config

	mu sync.Mutex
	t  *task // nil before Create and after Delete
}

var _ taskv2.TTRPCTaskService = (*Service)(nil)

func newService(ctx context.Context, ns, id, root string, pub *publisher, shutdown func()) *Service {
	return &Service{ctx: ctx, ns: ns, id: id, root: root, pub: pub, shutdown: shutdown}
}

type task struct {
	id, bundle string
	spec       *specs.Spec
	stdin      string
	stdout     string
	stderr     string
	terminal   bool

	u          *uvm.UVM
	res        *resources.Resources
	disposable bool
	pid        uint32 // QEMU's: the task's process on the host

	in       *stdinPipe
	out, err io.WriteCloser

	mu         sync.Mutex
	status     tasktypes.Status
	ct         *agent.Container
	exited     chan struct{}
	exitStatus uint32
	exitedAt   time.Time
	torn       bool
}

func (t *task) state() (tasktypes.Status, uint32, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status, t.exitStatus, t.exitedAt
}

// grpcErr maps errors to what containerd understands over ttrpc.
func grpcErr(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *Service) task(id, execID string) (*task, error) {
	if execID != "" {
		return nil, fmt.Errorf("exec %s: %w", execID, errdefs.ErrNotFound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t == nil || (id != "" && id != s.t.id) {
		return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	return s.t, nil
}

// Create makes the task's utility VM, attaches the layers behind its
// rootfs mount and a fresh scratch, combines them in the guest and sets
// up the spec's mounts there. The container itself starts at Start.
func (s *Service) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (_ *taskv2.CreateTaskResponse, err error) {
	s.mu.Lock()
	if s.t != nil {
		s.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("task %s: %w", s.t.id, errdefs.ErrAlreadyExists))
	}
	t := &task{id: r.ID, bundle: r.Bundle, stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		status: tasktypes.Status_CREATED, exited: make(chan struct{})}
	s.t = t // reserve: a second Create is refused while this one runs
	s.mu.Unlock()
	slog.Info("create task", "id", r.ID, "bundle", r.Bundle, "rootfs", len(r.Rootfs), "terminal", r.Terminal)
	var un undo.Stack
	defer func() {
		if err != nil {
			err = errors.Join(err, un.Run(context.WithoutCancel(ctx)))
			s.mu.Lock()
			s.t = nil
			s.mu.Unlock()
			slog.Error("create task failed", "id", r.ID, "err", err)
			err = grpcErr(err)
		}
	}()
	if r.ID != s.id {
		return nil, fmt.Errorf("task %s in the shim of %s: %w", r.ID, s.id, errdefs.ErrInvalidArgument)
	}
	if len(r.Checkpoint) > 0 || r.Options != nil && len(r.Options.GetValue()) > 0 {
		slog.Warn("create task: checkpoint and runtime options are ignored", "id", r.ID)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	t.spec = spec
	if spec.Process == nil {
		return nil, fmt.Errorf("bundle %s: spec has no process: %w", r.Bundle, errdefs.ErrInvalidArgument)
	}
	// The guest's crun (Debian's 1.8) refuses an ociVersion newer than it
	// knows ("unknown version specified"), and containerd 2.4 writes
	// 1.3.0: a 1.x spec is handed over as the version layervisor's own
	// specs carry (the fields crun knows are read as they are).
	if strings.HasPrefix(spec.Version, "1.") && spec.Version != runspec.SpecVersion {
		slog.Debug("spec version lowered for the guest runtime", "from", spec.Version, "to", runspec.SpecVersion)
		spec.Version = runspec.SpecVersion
	}
	if spec.Hooks != nil {
		// Hooks name host programs; the container is in the guest.
		slog.Warn("OCI hooks are not run in a utility VM", "id", r.ID)
		spec.Hooks = nil
	}

	// I/O first: a client that went away fails here, before a VM is made.
	if err := t.openIO(ctx); err != nil {
		return nil, err
	}
	un.Push("close stdio", func(context.Context) error { t.closeIO(); return nil })

	cfg := s.UVMConfig
	cfg.ID, cfg.Root = uvmID(s.ns, r.ID), s.root
	u, err := uvm.Create(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create utility VM: %w", err)
	}
	t.u = u
	un.Push("remove utility VM", func(ctx context.Context) error {
		return errors.Join(u.Kill(ctx), u.Remove(ctx))
	})
	if err := u.Start(ctx); err != nil {
		return nil, fmt.Errorf("start utility VM: %w", err)
	}
	t.pid = uint32(u.State().PID)

	// The container's scratch lives in the UVM's directory: removed with
	// it, and reaped with it by gc when the shim dies.
	folders, err := layerFolders(r.Rootfs, filepath.Join(uvm.Dir(s.root, cfg.ID), "container"))
	if err != nil {
		return nil, err
	}
	vm := vmcontainer.VM{U: u}
	mounter := layers.NewInUVM(vm)
	mounter.Device = layers.LayerDeviceSCSI // attaches fastest (see README)
	spec.Root = &specs.Root{Readonly: spec.Root != nil && spec.Root.Readonly}
	res, err := resources.Setup(ctx, vm, mounter, resources.Container{
		ID: r.ID, Spec: spec, LayerFolders: folders, GuestRoot: vmcontainer.GuestRoot(r.ID), TemplateRoot: s.root,
	})
	if err != nil {
		return nil, fmt.Errorf("set up the container in the utility VM: %w", err)
	}
	t.res = res
	un.Push("release container resources", res.Release)
	// As `layervisor run`: when all the container may write dies with the
	// VM, teardown just ends QEMU.
	t.disposable = !res.WritesOutside
	spec.Root.Path = res.Rootfs
	spec.Mounts = slices.DeleteFunc(spec.Mounts, func(m specs.Mount) bool { return !runspec.RuntimeProvided(m) })
	un.Commit()

	s.pub.publish(TopicTaskCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: t.pid, Checkpoint: r.Checkpoint,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	slog.Info("task created", "id", r.ID, "uvm", cfg.ID, "pid", t.pid, "layers", len(folders)-1, "template", u.State().Template)
	return &taskv2.CreateTaskResponse{Pid: t.pid}, nil
}

func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// stdinPipe is the container's stdin: the FIFO copied into a pipe, so that
// CloseIO ends it (EOF in the container) whatever the FIFO's writers do.
type stdinPipe struct {
	f    io.ReadWriteCloser
	r    *io.PipeReader
	w    *io.PipeWriter
	once sync.Once
}

func (p *stdinPipe) close() {
	p.once.Do(func() {
		p.w.Close()
		p.f.Close()
	})
}

func (t *task) openIO(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, stdioTimeout)
	defer cancel()
	defer func() {
		if err != nil {
			t.closeIO()
		}
	}()
	open := func(p string) (io.WriteCloser, error) {
		if p == "" {
			return nopCloser{io.Discard}, nil
		}
		f, err := fifo.OpenFifo(ctx, p, syscall.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		return f, nil
	}
	if t.out, err = open(t.stdout); err != nil {
		return err
	}
	if t.terminal {
		t.err = nopCloser{io.Discard} // a terminal's output all comes on stdout
	} else if t.err, err = open(t.stderr); err != nil {
		return err
	}
	if t.stdin != "" {
		// Non-blocking open, as containerd's runc shim: the client may
		// open its end later.
		f, err := fifo.OpenFifo(context.WithoutCancel(ctx), t.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", t.stdin, err)
		}
		pr, pw := io.Pipe()
		t.in = &stdinPipe{f: f, r: pr, w: pw}
		go func() {
			io.Copy(pw, f)
			pw.Close()
		}()
	}
	return nil
}

func (t *task) closeIO() {
	if t.in != nil {
		t.in.close()
	}
	for _, c := range []io.Closer{t.out, t.err} {
		if c != nil {
			c.Close()
		}
	}
}

// Start starts the container in the guest.
func (s *Service) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	t.mu.Lock()
	if t.status != tasktypes.Status_CREATED || t.ct != nil {
		st := t.status
		t.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("task %s is %s: %w", t.id, st, errdefs.ErrFailedPrecondition))
	}
	var stdin io.Reader
	if t.in != nil {
		stdin = t.in.r
	}
	// The request runs as long as the container: it belongs to the
	// daemon, not to this call.
	t.ct = t.u.Agent().StartContainer(s.ctx, agent.ContainerRequest{ID: t.id, Spec: t.spec, Stdin: stdin, Stdout: t.out, Stderr: t.err})
	t.status = tasktypes.Status_RUNNING
	t.mu.Unlock()
	go s.waitExit(t)
	s.pub.publish(TopicTaskStart, &eventstypes.TaskStart{ContainerID: t.id, Pid: t.pid})
	slog.Info("task started", "id", t.id)
	return &taskv2.StartResponse{Pid: t.pid}, nil
}

// waitExit records the container's exit and publishes it.
func (s *Service) waitExit(t *task) {
	code, err := t.ct.Wait()
	if err != nil {
		switch {
		case agent.IsCode(err, agent.CodeExecNotFound):
			code = 127
		case code == 0:
			code = 255
		}
		fmt.Fprintf(t.err, "%s: %v\n", BinaryName, err)
		slog.Error("container ended with an error", "id", t.id, "err", err)
	}
	t.finish(uint32(code))
	s.pub.publish(TopicTaskExit, &eventstypes.TaskExit{ContainerID: t.id, ID: t.id, Pid: t.pid,
		ExitStatus: uint32(code), ExitedAt: timestamppb.New(t.exitedAt)})
	slog.Info("task exited", "id", t.id, "status", code)
}

// finish records the exit status (once) and ends the output streams, so
// the client's copies reach EOF.
func (t *task) finish(code uint32) bool {
	t.mu.Lock()
	if t.status == tasktypes.Status_STOPPED {
		t.mu.Unlock()
		return false
	}
	t.status, t.exitStatus, t.exitedAt = tasktypes.Status_STOPPED, code, time.Now()
	t.mu.Unlock()
	t.closeIO()
	close(t.exited)
	return true
}

// teardown ends the task's VM and removes its state: QEMU just quits when
// nothing the container wrote outlives it, else the guest releases
// everything first.
func (t *task) teardown(ctx context.Context) error {
	t.mu.Lock()
	if t.torn {
		t.mu.Unlock()
		return nil
	}
	t.torn = true
	t.mu.Unlock()
	var errs []error
	stop := t.u.Kill
	if !t.disposable {
		if t.res != nil {
			errs = append(errs, t.res.Release(ctx))
		}
		stop = t.u.Stop
	}
	errs = append(errs, stop(ctx), t.u.Remove(ctx))
	t.closeIO()
	return errors.Join(errs...)
}

// Delete tears a stopped (or never started) task down.
func (s *Service) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if st, _, _ := t.state(); st == tasktypes.Status_RUNNING {
		return nil, grpcErr(fmt.Errorf("task %s is running: %w", t.id, errdefs.ErrFailedPrecondition))
	}
	t.finish(0) // a created task that never ran
	_, code, at := t.state()
	terr := t.teardown(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.t = nil
	s.mu.Unlock()
	if terr != nil {
		slog.Error("tear down task", "id", t.id, "err", terr)
	}
	s.pub.publish(TopicTaskDelete, &eventstypes.TaskDelete{ContainerID: t.id, ID: t.id, Pid: t.pid, ExitStatus: code, ExitedAt: timestamppb.New(at)})
	slog.Info("task deleted", "id", t.id)
	return &taskv2.DeleteResponse{Pid: t.pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// teardown (on shim exit) ends whatever task is left.
func (s *Service) teardown(ctx context.Context) {
	s.mu.Lock()
	t := s.t
	s.t = nil
	s.mu.Unlock()
	if t == nil || t.u == nil {
		return
	}
	if err := t.teardown(ctx); err != nil {
		slog.Error("tear down task at shim exit", "id", t.id, "err", err)
	}
}

// State reports the task's status.
func (s *Service) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	st, code, at := t.state()
	resp := &taskv2.StateResponse{ID: t.id, Bundle: t.bundle, Pid: t.pid, Status: st,
		Stdin: t.stdin, Stdout: t.stdout, Stderr: t.stderr, Terminal: t.terminal, ExitStatus: code}
	if st == tasktypes.Status_STOPPED {
		resp.ExitedAt = timestamppb.New(at)
	}
	return resp, nil
}

// Wait waits for the task to exit.
func (s *Service) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	select {
	case <-t.exited:
	case <-ctx.Done():
		return nil, grpcErr(ctx.Err())
	}
	_, code, at := t.state()
	return &taskv2.WaitResponse{ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Kill signals the container's init in the guest. With All it still
// signals the init only: in the container's PID namespace, SIGKILL to it
// ends every process.
func (s *Service) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	t.mu.Lock()
	st, ct := t.status, t.ct
	t.mu.Unlock()
	switch {
	case st == tasktypes.Status_STOPPED:
		return nil, grpcErr(fmt.Errorf("task %s: process already finished: %w", t.id, errdefs.ErrNotFound))
	case ct == nil: // created, not started: it ends without running
		if t.finish(128 + r.Signal) {
			s.pub.publish(TopicTaskExit, &eventstypes.TaskExit{ContainerID: t.id, ID: t.id, Pid: t.pid,
				ExitStatus: 128 + r.Signal, ExitedAt: timestamppb.New(time.Now())})
		}
		return &emptypb.Empty{}, nil
	}
	if err := signalRetry(ctx, ct, syscall.Signal(r.Signal), t.exited); err != nil {
		return nil, grpcErr(fmt.Errorf("signal %d to task %s: %w", r.Signal, t.id, err))
	}
	return &emptypb.Empty{}, nil
}

// killRetryFor bounds signalRetry.
const killRetryFor = 5 * time.Second

// signalRetry signals the container, retrying while the guest's runtime
// has not recorded it yet: the guest reports a container started as soon
// as its `crun run` process is (pkg/ociruntime), and `crun kill` fails
// ("error opening file /run/oci/<id>/status") until crun has written its
// state, which takes a moment under TCG.
func signalRetry(ctx context.Context, ct *agent.Container, sig syscall.Signal, exited <-chan struct{}) error {
	deadline := time.Now().Add(killRetryFor)
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		err := ct.Signal(ctx, sig)
		if err == nil || !agent.IsCode(err, agent.CodeInternal) || time.Now().After(deadline) {
			return err
		}
		slog.Debug("signal not delivered yet: retrying", "signal", sig, "err", err)
		select {
		case <-exited:
			return nil
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

// Pids lists the task's process: the QEMU running it (the guest's
// processes are not visible on the host).
func (s *Service) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	t, err := s.task(r.ID, "")
	if err != nil {
		return nil, grpcErr(err)
	}
	return &taskv2.PidsResponse{Processes: []*tasktypes.ProcessInfo{{Pid: t.pid}}}, nil
}

// CloseIO ends the container's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if r.Stdin && t.in != nil {
		t.in.close()
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes the container's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	t, err := s.task(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	t.mu.Lock()
	ct := t.ct
	t.mu.Unlock()
	if ct == nil || !t.terminal {
		return &emptypb.Empty{}, nil
	}
	if err := ct.Resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		return nil, grpcErr(fmt.Errorf("resize terminal of task %s: %w", t.id, err))
	}
	return &emptypb.Empty{}, nil
}

// Connect reports the shim's and the task's host processes.
func (s *Service) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	var pid uint32
	if t, err := s.task(r.ID, ""); err == nil {
		pid = t.pid
	}
	return &taskv2.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: pid, Version: Version}, nil
}

// Shutdown ends the shim once its task is deleted.
func (s *Service) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	busy := s.t != nil
	s.mu.Unlock()
	if busy && !r.Now {
		return &emptypb.Empty{}, nil
	}
	slog.Info("shim shutdown", "now", r.Now)
	s.shutdown()
	return &emptypb.Empty{}, nil
}

func notImplemented(what string) error {
	return grpcErr(fmt.Errorf("%s in a utility VM: %w", what, errdefs.ErrNotImplemented))
}

// Exec is not implemented yet (it needs an agent operation that runs a
// process in a running container).
func (s *Service) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("exec")
}

func (s *Service) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("pause")
}

func (s *Service) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("resume")
}

func (s *Service) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("checkpoint")
}

func (s *Service) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("update")
}

func (s *Service) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return nil, notImplemented("stats")
}
