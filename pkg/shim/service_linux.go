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

	"github.com/layervisor/layervisor/internal/logctx"
	"github.com/layervisor/layervisor/internal/podnet"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vmrun"
)

// stdioTimeout bounds opening a task's stdio FIFOs (the client opened its
// ends before asking for the task).
const stdioTimeout = 10 * time.Second

// Service is the containerd.task.v2.Task service of one shim: the tasks
// of one group (a pod, or a lone container) in one utility VM, made at the
// first Create and torn down when the last task is deleted. Safe for
// concurrent use.
type Service struct {
	ctx      context.Context // the daemon's: outlives requests
	ns, id   string          // id: the group's (the shim's socket and UVM)
	root     string
	pub      *publisher
	shutdown func()

	// Config for the UVM this service makes (Root and ID are set here).
	UVMConfig uvm.Config

	mu    sync.Mutex
	tasks map[string]*task // by container id; reserved at Create

	// vmMu serializes the UVM's life: made, containers set up in it and
	// released from it, torn down. Taken before mu, never under it.
	vmMu sync.Mutex
	vm   *sandboxVM // nil without containers
}

// sandboxVM is the group's utility VM and its containers (package vmrun),
// and the pod network wired to it.
type sandboxVM struct {
	run    *vmrun.Sandbox
	u      *uvm.UVM
	pid    uint32 // QEMU's: every task's process on the host
	podNet *podnet.Link
}

// end ends the VM (vmrun decides how) and removes it, then unwires the
// pod network from the CNI interface.
func (sb *sandboxVM) end(ctx context.Context) error {
	errs := []error{sb.run.End(ctx)}
	if sb.podNet != nil {
		errs = append(errs, sb.podNet.Unwire())
	}
	return errors.Join(errs...)
}

var _ taskv2.TTRPCTaskService = (*Service)(nil)

func newService(ctx context.Context, ns, id, root string, pub *publisher, shutdown func()) *Service {
	return &Service{ctx: ctx, ns: ns, id: id, root: root, pub: pub, shutdown: shutdown, tasks: map[string]*task{}}
}

// process is the task's init or one of its execs: its stdio and state.
type process struct {
	execID   string         // "" for the init
	spec     *specs.Process // an exec's
	stdin    string
	stdout   string
	stderr   string
	terminal bool

	in       *stdinPipe
	out, err io.WriteCloser

	mu         sync.Mutex
	status     tasktypes.Status
	ct         *agent.Container
	exited     chan struct{}
	exitStatus uint32
	exitedAt   time.Time
}

type task struct {
	id, bundle string
	created    bool // Create finished: visible to the other calls

	u   *uvm.UVM
	ctr *vmrun.Container // set up in the group's VM
	// hostRootfs is where a plain (not layervisor) snapshot is mounted on
	// the host, shared read-write into the guest as rootShare; "" for
	// layer images attached to the VM.
	hostRootfs string
	rootShare  layers.Attachment
	pid        uint32 // QEMU's: the task's process on the host

	process // the container's init; its mu also guards execs and torn

	execs map[string]*process
	torn  bool
}

func (p *process) state() (tasktypes.Status, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitStatus, p.exitedAt
}

// logCtx is ctx with what identifies a task request in the log (package
// logctx): the shim's namespace and sandbox (the group its VM is for), the
// container and the exec, if any.
func (s *Service) logCtx(ctx context.Context, id, execID string) context.Context {
	attrs := []slog.Attr{slog.String("namespace", s.ns), slog.String("sandbox", s.id), slog.String("container", id)}
	if execID != "" {
		attrs = append(attrs, slog.String("exec", execID))
	}
	return logctx.With(ctx, attrs...)
}

// grpcErr maps errors to what containerd understands over ttrpc.
func grpcErr(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *Service) task(id string) (*task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil || !t.created {
		return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	return t, nil
}

// process finds the task and its init (execID "") or exec.
func (s *Service) process(id, execID string) (*task, *process, error) {
	t, err := s.task(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return t, &t.process, nil
	}
	t.mu.Lock()
	p := t.execs[execID]
	t.mu.Unlock()
	if p == nil {
		return nil, nil, fmt.Errorf("exec %s in task %s: %w", execID, t.id, errdefs.ErrNotFound)
	}
	return t, p, nil
}

// name names a process in messages.
func (t *task) name(p *process) string {
	if p.execID == "" {
		return "task " + t.id
	}
	return fmt.Sprintf("exec %s in task %s", p.execID, t.id)
}

// releaseTimeout bounds releasing a container's resources in the guest.
const releaseTimeout = 2 * time.Minute

// Create checks the spec and rootfs (refusing, before any VM is made,
// what the guest cannot honour), makes the group's utility VM if it has
// none yet, attaches the layers behind the task's rootfs mount and a fresh
// scratch, combines them in the guest and sets up the spec's mounts
// there. The container itself starts at Start.
func (s *Service) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (_ *taskv2.CreateTaskResponse, err error) {
	ctx = s.logCtx(ctx, r.ID, "")
	t := &task{id: r.ID, bundle: r.Bundle, execs: map[string]*process{}, process: process{
		stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		status: tasktypes.Status_CREATED, exited: make(chan struct{}),
	}}
	s.mu.Lock()
	if s.tasks[r.ID] != nil {
		s.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("task %s: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	s.tasks[r.ID] = t // reserve: a second Create is refused while this one runs
	s.mu.Unlock()
	slog.InfoContext(ctx, "create task", "bundle", r.Bundle, "rootfs", len(r.Rootfs), "terminal", r.Terminal)
	var un undo.Stack
	defer func() {
		if err != nil {
			err = errors.Join(err, un.Run(context.WithoutCancel(ctx)))
			s.mu.Lock()
			delete(s.tasks, r.ID)
			s.mu.Unlock()
			slog.ErrorContext(ctx, "create task failed", "err", err)
			err = grpcErr(err)
		}
	}()
	if r.ID == "" || strings.ContainsAny(r.ID, "/\\") || r.ID == "." || r.ID == ".." {
		return nil, fmt.Errorf("task id %q: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if len(r.Checkpoint) > 0 || r.Options != nil && len(r.Options.GetValue()) > 0 {
		slog.WarnContext(ctx, "create task: checkpoint and runtime options are ignored")
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	if g := grouping(r.ID, spec); g != s.id && g != r.ID {
		return nil, fmt.Errorf("task %s of group %s in the shim of group %s: %w", r.ID, g, s.id, errdefs.ErrInvalidArgument)
	}
	if err := checkSpec(spec); err != nil {
		return nil, fmt.Errorf("task %s: %w", r.ID, err)
	}
	// The guest's crun (Debian's 1.8) refuses an ociVersion newer than it
	// knows ("unknown version specified"), and containerd 2.4 writes
	// 1.3.0: a 1.x spec is handed over as the version layervisor's own
	// specs carry (the fields crun knows are read as they are).
	if strings.HasPrefix(spec.Version, "1.") && spec.Version != runspec.SpecVersion {
		slog.DebugContext(ctx, "spec version lowered for the guest runtime", "from", spec.Version, "to", runspec.SpecVersion)
		spec.Version = runspec.SpecVersion
	}
	if spec.Hooks != nil {
		// Hooks name host programs; the container is in the guest.
		slog.WarnContext(ctx, "OCI hooks are not run in a utility VM")
		spec.Hooks = nil
	}
	// The container's scratch lives in the UVM's directory: removed with
	// it, and reaped with it by gc when the shim dies.
	uvmID := uvmID(s.ns, s.id)
	scratch := filepath.Join(uvm.Dir(s.root, uvmID), "containers", r.ID)
	folders, err := layerFolders(r.Rootfs, scratch)
	if err != nil {
		if !errors.Is(err, errNotLayerImages) || !plainRootfs(r.Rootfs) {
			return nil, fmt.Errorf("task %s: %w: %w", r.ID, err, errdefs.ErrInvalidArgument)
		}
		// A plain snapshot (containerd's overlayfs snapshotter): mounted
		// on the host as runc's shim does, and shared into the guest
		// read-write through virtiofs. Setup then mounts no layers (the
		// root is set); it still wants layer folders and makes the scratch.
		t.hostRootfs = filepath.Join(r.Bundle, "rootfs")
		folders = []string{scratch, scratch}
	}

	// The pod's network next: a namespace CNI did not set up fails here.
	link, err := s.podNetwork(spec)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", r.ID, err)
	}
	if link != nil {
		un.Push("unwire the pod network", func(context.Context) error {
			s.vmMu.Lock()
			defer s.vmMu.Unlock()
			if s.vm != nil && s.vm.podNet == link {
				return nil // the VM's now, unwired when it ends
			}
			return link.Unwire()
		})
	}

	// I/O next: a client that went away fails here, before a VM is made.
	if err := t.openIO(ctx); err != nil {
		return nil, err
	}
	un.Push("close stdio", func(context.Context) error { t.closeIO(); return nil })
	if t.hostRootfs != "" {
		if err := mountHostRootfs(r.Rootfs, t.hostRootfs); err != nil {
			return nil, err
		}
		un.Push("unmount the rootfs", func(context.Context) error { return unmountHostRootfs(t.hostRootfs) })
	}

	s.vmMu.Lock()
	defer s.vmMu.Unlock()
	sb, err := s.ensureVM(ctx, uvmID, spec.Annotations)
	if err != nil {
		return nil, err
	}
	// A VM made for this container goes with it when it fails.
	// (The undo runs after vmMu is released: it takes it again.)
	un.Push("remove the utility VM if unused", func(ctx context.Context) error {
		s.vmMu.Lock()
		defer s.vmMu.Unlock()
		return s.dropVMIfUnused(ctx)
	})
	t.u, t.pid = sb.u, sb.pid
	var root string
	if t.hostRootfs != "" {
		a, err := sb.run.VM().AddShare(ctx, t.hostRootfs, false)
		if err != nil {
			return nil, fmt.Errorf("share the rootfs %s into the utility VM: %w", t.hostRootfs, err)
		}
		t.rootShare = a
		un.Push("release the rootfs share", a.Release)
		root = a.GuestPath()
	}
	// As `layervisor run`: when all the container may write dies with the
	// VM, teardown just ends QEMU.
	t.ctr, err = sb.run.Add(ctx, vmrun.ContainerConfig{ID: r.ID, Spec: spec, LayerFolders: folders, TemplateRoot: s.root, Root: root})
	if err != nil {
		return nil, fmt.Errorf("set up the container in the utility VM: %w", err)
	}
	un.Push("take the container out of the utility VM", func(ctx context.Context) error {
		_, err := sb.run.Remove(ctx, t.ctr)
		return err
	})
	// The pod's namespaces last: joining them waits for the sandbox's
	// init, and a sandbox still starting in the guest does so while this
	// container is set up.
	if err := s.guestNamespaces(ctx, sb, spec, link); err != nil {
		return nil, fmt.Errorf("task %s: %w", r.ID, err)
	}
	un.Commit()
	s.mu.Lock()
	t.created = true
	s.mu.Unlock()

	s.pub.publish(ctx, TopicTaskCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: t.pid, Checkpoint: r.Checkpoint,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	slog.InfoContext(ctx, "task created", "uvm", uvmID, "pid", t.pid, "layers", len(folders)-1, "containers", sb.run.Containers(), "template", sb.u.State().Template)
	return &taskv2.CreateTaskResponse{Pid: t.pid}, nil
}

// ensureVM returns the group's UVM, making and starting it if there is
// none. The caller holds vmMu.
func (s *Service) ensureVM(ctx context.Context, id string, annotations map[string]string) (_ *sandboxVM, err error) {
	if s.vm != nil {
		return s.vm, nil
	}
	cfg := s.UVMConfig
	cfg.ID, cfg.Root = id, s.root
	sizeForPod(ctx, &cfg, annotations)
	// SCSI attaches layers fastest (see README).
	run, err := vmrun.Start(ctx, cfg, vmrun.Options{Device: layers.LayerDeviceSCSI})
	if err != nil {
		return nil, err
	}
	u := run.UVM()
	s.vm = &sandboxVM{run: run, u: u, pid: uint32(u.State().PID)}
	slog.InfoContext(ctx, "utility VM started", "uvm", id, "pid", s.vm.pid)
	return s.vm, nil
}

// dropVMIfUnused ends the UVM when no container is set up in it. The
// caller holds vmMu.
func (s *Service) dropVMIfUnused(ctx context.Context) error {
	if s.vm == nil || s.vm.run.Containers() > 0 {
		return nil
	}
	sb := s.vm
	s.vm = nil
	return sb.end(ctx)
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

func (t *process) openIO(ctx context.Context) (err error) {
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

func (t *process) closeIO() {
	if t.in != nil {
		t.in.close()
	}
	for _, c := range []io.Closer{t.out, t.err} {
		if c != nil {
			c.Close()
		}
	}
}

// Start starts the container in the guest, or an exec in it.
func (s *Service) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if p.execID != "" {
		if st, _, _ := t.state(); st != tasktypes.Status_RUNNING {
			return nil, grpcErr(fmt.Errorf("exec %s: task %s is %s: %w", p.execID, t.id, st, errdefs.ErrFailedPrecondition))
		}
	}
	p.mu.Lock()
	if p.status != tasktypes.Status_CREATED || p.ct != nil {
		st := p.status
		p.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("%s is %s: %w", t.name(p), st, errdefs.ErrFailedPrecondition))
	}
	var stdin io.Reader
	if p.in != nil {
		stdin = p.in.r
	}
	// The request runs as long as the process: it belongs to the daemon,
	// not to this call.
	if p.execID == "" {
		p.ct = t.ctr.Start(s.ctx, vmrun.Stdio{Stdin: stdin, Stdout: p.out, Stderr: p.err})
	} else {
		p.ct = t.u.Agent().ExecInContainer(s.ctx, agent.ExecInContainerRequest{Container: t.id, Process: p.spec, Stdin: stdin, Stdout: p.out, Stderr: p.err})
	}
	p.status = tasktypes.Status_RUNNING
	ct := p.ct
	p.mu.Unlock()
	// Started means running in the guest (crun's start there takes
	// ~0.5-1 s under TCG): a signal, exec or stop right after this call
	// finds the process. One that never starts ends (Done), and its exit
	// says why; a guest that does not answer is not waited for long.
	wait := time.NewTimer(startWait)
	select {
	case <-ct.Running():
	case <-ct.Done():
	case <-ctx.Done():
	case <-wait.C:
		slog.WarnContext(ctx, "the guest has not said the process runs; start returns anyway", "waited", startWait)
	}
	wait.Stop()
	go s.waitExit(context.WithoutCancel(ctx), t, p)
	if p.execID == "" {
		s.pub.publish(ctx, TopicTaskStart, &eventstypes.TaskStart{ContainerID: t.id, Pid: t.pid})
	} else {
		s.pub.publish(ctx, TopicTaskExecStarted, &eventstypes.TaskExecStarted{ContainerID: t.id, ExecID: p.execID, Pid: t.pid})
	}
	slog.InfoContext(ctx, "process started")
	return &taskv2.StartResponse{Pid: t.pid}, nil
}

// startWait bounds Start's wait for the guest to say a process runs.
const startWait = 30 * time.Second

// waitExit records a process's exit and publishes it. ctx is only for the
// log (its Start's, without cancellation).
func (s *Service) waitExit(ctx context.Context, t *task, p *process) {
	code, err := p.ct.Wait()
	if err != nil {
		switch {
		case agent.IsCode(err, agent.CodeExecNotFound):
			code = 127
		case code == 0:
			code = 255
		}
		fmt.Fprintf(p.err, "%s: %v\n", BinaryName, err)
		slog.ErrorContext(ctx, "process ended with an error", "err", err)
	}
	if p.execID == "" && p.ct.OOMKilled() {
		// Before the exit: CRI reports the reason (OOMKilled) from it.
		s.pub.publish(ctx, TopicTaskOOM, &eventstypes.TaskOOM{ContainerID: t.id})
		slog.InfoContext(ctx, "container OOM-killed")
	}
	p.finish(uint32(code))
	id := t.id
	if p.execID != "" {
		id = p.execID
	}
	s.pub.publish(ctx, TopicTaskExit, &eventstypes.TaskExit{ContainerID: t.id, ID: id, Pid: t.pid,
		ExitStatus: uint32(code), ExitedAt: timestamppb.New(p.exitedAt)})
	slog.InfoContext(ctx, "process exited", "status", code)
}

// finish records the exit status (once) and ends the output streams, so
// the client's copies reach EOF.
func (t *process) finish(code uint32) bool {
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

// teardown releases what the task holds in the group's UVM, and ends the
// UVM when it was its last container: QEMU just quits when nothing the
// container wrote outlives it, else the guest releases everything first.
func (s *Service) teardownTask(ctx context.Context, t *task) error {
	t.mu.Lock()
	if t.torn {
		t.mu.Unlock()
		return nil
	}
	t.torn = true
	t.mu.Unlock()
	defer func() {
		t.closeIO()
		t.mu.Lock()
		for _, p := range t.execs {
			p.closeIO()
		}
		t.mu.Unlock()
	}()
	s.vmMu.Lock()
	defer s.vmMu.Unlock()
	sb := s.vm
	if sb == nil || t.ctr == nil {
		return nil
	}
	// vmrun releases the container (and removes its scratch) unless it is
	// the last and disposable; a plain snapshot's root never is.
	last, err := sb.run.Remove(ctx, t.ctr)
	errs := []error{err}
	if t.rootShare != nil {
		rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
		errs = append(errs, t.rootShare.Release(rctx))
		cancel()
		if errors.Join(errs...) == nil {
			errs = append(errs, unmountHostRootfs(t.hostRootfs))
		}
	}
	if !last {
		slog.InfoContext(ctx, "container released from the utility VM", "containers left", sb.run.Containers())
		return errors.Join(errs...)
	}
	s.vm = nil
	errs = append(errs, sb.end(ctx))
	if t.hostRootfs != "" {
		errs = append(errs, unmountHostRootfs(t.hostRootfs)) // again, if the release failed: the VM is gone now
	}
	slog.InfoContext(ctx, "utility VM ended with its last container")
	return errors.Join(errs...)
}

// Delete tears a stopped (or never started) task down, or forgets an
// exec.
func (s *Service) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if st, _, _ := p.state(); st == tasktypes.Status_RUNNING || st == tasktypes.Status_PAUSED {
		return nil, grpcErr(fmt.Errorf("%s is %s: %w", t.name(p), st, errdefs.ErrFailedPrecondition))
	}
	p.finish(0) // a created process that never ran
	_, code, at := p.state()
	if p.execID != "" {
		t.mu.Lock()
		delete(t.execs, p.execID)
		t.mu.Unlock()
		slog.InfoContext(ctx, "exec deleted")
		return &taskv2.DeleteResponse{Pid: t.pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
	}
	terr := s.teardownTask(context.WithoutCancel(ctx), t)
	s.mu.Lock()
	delete(s.tasks, t.id)
	s.mu.Unlock()
	if terr != nil {
		slog.ErrorContext(ctx, "tear down task", "err", terr)
	}
	s.pub.publish(ctx, TopicTaskDelete, &eventstypes.TaskDelete{ContainerID: t.id, ID: t.id, Pid: t.pid, ExitStatus: code, ExitedAt: timestamppb.New(at)})
	slog.InfoContext(ctx, "task deleted")
	return &taskv2.DeleteResponse{Pid: t.pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// teardown (on shim exit) ends whatever tasks are left, and their VM.
func (s *Service) teardown(ctx context.Context) {
	s.mu.Lock()
	var ts []*task
	for _, t := range s.tasks {
		if t.created {
			ts = append(ts, t)
		}
	}
	clear(s.tasks)
	s.mu.Unlock()
	// Disposable ones last: the VM ends with the last, so it is killed
	// only when nothing left needs a clean release.
	slices.SortFunc(ts, func(a, b *task) int {
		switch {
		case a.ctr.Disposable == b.ctr.Disposable:
			return 0
		case a.ctr.Disposable:
			return 1
		}
		return -1
	})
	for _, t := range ts {
		tctx := s.logCtx(ctx, t.id, "")
		if err := s.teardownTask(tctx, t); err != nil {
			slog.ErrorContext(tctx, "tear down task at shim exit", "err", err)
		}
	}
	s.vmMu.Lock()
	defer s.vmMu.Unlock()
	if sb := s.vm; sb != nil { // a Create that failed half-way
		s.vm = nil
		if err := sb.end(ctx); err != nil {
			slog.ErrorContext(ctx, "end utility VM at shim exit", "err", err)
		}
	}
}

// State reports the task's (or an exec's) status.
func (s *Service) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	st, code, at := p.state()
	resp := &taskv2.StateResponse{ID: t.id, ExecID: p.execID, Bundle: t.bundle, Pid: t.pid, Status: st,
		Stdin: p.stdin, Stdout: p.stdout, Stderr: p.stderr, Terminal: p.terminal, ExitStatus: code}
	if st == tasktypes.Status_STOPPED {
		resp.ExitedAt = timestamppb.New(at)
	}
	return resp, nil
}

// Wait waits for the task (or an exec) to exit.
func (s *Service) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, grpcErr(ctx.Err())
	}
	_, code, at := p.state()
	return &taskv2.WaitResponse{ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Kill signals the container's init (or an exec) in the guest. With All
// it still signals the init only: in the container's PID namespace,
// SIGKILL to it ends every process.
func (s *Service) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	p.mu.Lock()
	st, ct := p.status, p.ct
	p.mu.Unlock()
	switch {
	case st == tasktypes.Status_STOPPED:
		return nil, grpcErr(fmt.Errorf("%s: process already finished: %w", t.name(p), errdefs.ErrNotFound))
	case ct == nil: // created, not started: it ends without running
		if p.finish(128 + r.Signal) {
			id := t.id
			if p.execID != "" {
				id = p.execID
			}
			s.pub.publish(ctx, TopicTaskExit, &eventstypes.TaskExit{ContainerID: t.id, ID: id, Pid: t.pid,
				ExitStatus: 128 + r.Signal, ExitedAt: timestamppb.New(time.Now())})
		}
		return &emptypb.Empty{}, nil
	}
	if err := signalRetry(ctx, ct, syscall.Signal(r.Signal), p.exited); err != nil {
		select {
		case <-p.exited:
			// It ended meanwhile (and its VM may be gone with it, which
			// failed the call): the signal's work is done.
			slog.DebugContext(ctx, "signal raced the process's exit", "err", err)
			return &emptypb.Empty{}, nil
		default:
		}
		return nil, grpcErr(fmt.Errorf("signal %d to %s: %w", r.Signal, t.name(p), err))
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
		slog.DebugContext(ctx, "signal not delivered yet: retrying", "signal", sig, "err", err)
		select {
		case <-exited:
			return nil
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

// agentTimeout bounds the agent requests of Pids, Stats, Pause and
// Resume.
const agentTimeout = 30 * time.Second

// running returns the task while its container runs in the guest
// (running or paused).
func (s *Service) running(id string) (*task, tasktypes.Status, error) {
	t, err := s.task(id)
	if err != nil {
		return nil, 0, err
	}
	st, _, _ := t.state()
	if st != tasktypes.Status_RUNNING && st != tasktypes.Status_PAUSED {
		return nil, st, fmt.Errorf("task %s is %s: %w", t.id, st, errdefs.ErrFailedPrecondition)
	}
	return t, st, nil
}

// Pids lists the processes of the container, by their pids in the guest
// (the host sees only the QEMU running them); a container not running
// has none.
func (s *Service) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	ctx = s.logCtx(ctx, r.ID, "")
	t, _, err := s.running(r.ID)
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		return &taskv2.PidsResponse{}, nil
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	pids, err := t.u.Agent().ContainerPids(ctx, t.id)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("processes of task %s: %w", t.id, err))
	}
	resp := &taskv2.PidsResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &tasktypes.ProcessInfo{Pid: uint32(pid)})
	}
	return resp, nil
}

// Stats reports the container's cgroup v2 statistics in the guest, as
// containerd's cgroups v2 Metrics.
func (s *Service) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	ctx = s.logCtx(ctx, r.ID, "")
	t, _, err := s.running(r.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	files, err := t.u.Agent().ContainerStats(ctx, t.id)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("statistics of task %s: %w", t.id, err))
	}
	a, err := marshalMetrics(parseMetrics(files))
	if err != nil {
		return nil, grpcErr(fmt.Errorf("statistics of task %s: %w", t.id, err))
	}
	return &taskv2.StatsResponse{Stats: a}, nil
}

// Pause freezes the container's processes.
func (s *Service) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(s.logCtx(ctx, r.ID, ""), r.ID, true)
}

// Resume thaws them.
func (s *Service) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(s.logCtx(ctx, r.ID, ""), r.ID, false)
}

func (s *Service) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	t, st, err := s.running(id)
	if err != nil {
		return nil, grpcErr(err)
	}
	from, to, what := tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, "pause"
	if !pause {
		from, to, what = tasktypes.Status_PAUSED, tasktypes.Status_RUNNING, "resume"
	}
	if st != from {
		return nil, grpcErr(fmt.Errorf("%s task %s: it is %s: %w", what, t.id, st, errdefs.ErrFailedPrecondition))
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	call := t.u.Agent().ResumeContainer
	if pause {
		call = t.u.Agent().PauseContainer
	}
	if err := call(ctx, t.id); err != nil {
		return nil, grpcErr(fmt.Errorf("%s task %s: %w", what, t.id, err))
	}
	t.mu.Lock()
	if t.status == from { // not exited meanwhile
		t.status = to
	}
	t.mu.Unlock()
	if pause {
		s.pub.publish(ctx, TopicTaskPaused, &eventstypes.TaskPaused{ContainerID: t.id})
	} else {
		s.pub.publish(ctx, TopicTaskResumed, &eventstypes.TaskResumed{ContainerID: t.id})
	}
	slog.InfoContext(ctx, "task "+what+"d")
	return &emptypb.Empty{}, nil
}

// CloseIO ends the stdin of the container (or of an exec).
func (s *Service) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if r.Stdin && p.in != nil {
		p.in.close()
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes the terminal of the container (or of an exec).
func (s *Service) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	p.mu.Lock()
	ct := p.ct
	p.mu.Unlock()
	if ct == nil || !p.terminal {
		return &emptypb.Empty{}, nil
	}
	if err := ct.Resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		if agent.IsCode(err, agent.CodeNotFound) {
			// It exited (or never started) meanwhile: its exit tells.
			slog.DebugContext(ctx, "resize of a process gone", "err", err)
			return &emptypb.Empty{}, nil
		}
		return nil, grpcErr(fmt.Errorf("resize terminal of %s: %w", t.name(p), err))
	}
	return &emptypb.Empty{}, nil
}

// Connect reports the shim's and the task's host processes.
func (s *Service) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	var pid uint32
	if t, err := s.task(r.ID); err == nil {
		pid = t.pid
	}
	return &taskv2.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: pid, Version: Version}, nil
}

// Shutdown ends the shim once its last task is deleted.
func (s *Service) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, r.ID, "")
	s.mu.Lock()
	busy := len(s.tasks) > 0
	s.mu.Unlock()
	if busy && !r.Now {
		return &emptypb.Empty{}, nil
	}
	slog.InfoContext(ctx, "shim shutdown", "now", r.Now)
	s.shutdown()
	return &emptypb.Empty{}, nil
}

func notImplemented(what string) error {
	return grpcErr(fmt.Errorf("%s in a utility VM: %w", what, errdefs.ErrNotImplemented))
}

// Exec adds a process to run in the running container: Start runs it in
// the guest with the container's runtime (crun exec).
func (s *Service) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (_ *emptypb.Empty, err error) {
	ctx = s.logCtx(ctx, r.ID, r.ExecID)
	t, err := s.task(r.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if r.ExecID == "" {
		return nil, grpcErr(fmt.Errorf("exec in task %s: no exec id: %w", t.id, errdefs.ErrInvalidArgument))
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &spec); err != nil {
		return nil, grpcErr(fmt.Errorf("exec %s in task %s: process spec: %w: %w", r.ExecID, t.id, err, errdefs.ErrInvalidArgument))
	}
	if len(spec.Args) == 0 {
		return nil, grpcErr(fmt.Errorf("exec %s in task %s: no command: %w", r.ExecID, t.id, errdefs.ErrInvalidArgument))
	}
	spec.Terminal = r.Terminal
	p := &process{execID: r.ExecID, spec: &spec, stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		status: tasktypes.Status_CREATED, exited: make(chan struct{})}
	t.mu.Lock()
	st := t.status
	switch {
	case st != tasktypes.Status_RUNNING:
		err = fmt.Errorf("exec %s: task %s is %s: %w", r.ExecID, t.id, st, errdefs.ErrFailedPrecondition)
	case t.execs[r.ExecID] != nil:
		err = fmt.Errorf("exec %s in task %s: %w", r.ExecID, t.id, errdefs.ErrAlreadyExists)
	default:
		t.execs[r.ExecID] = p // reserved while its stdio opens
	}
	t.mu.Unlock()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := p.openIO(ctx); err != nil {
		t.mu.Lock()
		delete(t.execs, r.ExecID)
		t.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("exec %s in task %s: %w", r.ExecID, t.id, err))
	}
	s.pub.publish(ctx, TopicTaskExecAdded, &eventstypes.TaskExecAdded{ContainerID: t.id, ExecID: r.ExecID})
	slog.InfoContext(ctx, "exec added", "terminal", r.Terminal)
	return &emptypb.Empty{}, nil
}

func (s *Service) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("checkpoint")
}

// Update changes the container's resource limits in the guest (its
// cgroup, through the guest's runtime). The VM's own size stays.
func (s *Service) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, r.ID, "")
	t, _, err := s.running(r.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return nil, grpcErr(fmt.Errorf("update task %s: resources: %w: %w", t.id, err, errdefs.ErrInvalidArgument))
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	if err := t.u.Agent().UpdateContainer(ctx, t.id, &res); err != nil {
		return nil, grpcErr(fmt.Errorf("update task %s: %w", t.id, err))
	}
	slog.InfoContext(ctx, "task resources updated")
	return &emptypb.Empty{}, nil
}
