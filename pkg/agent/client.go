package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrDisconnected is returned once the channel to the guest is lost.
var ErrDisconnected = errors.New("guest agent connection lost")

type call struct {
	done           chan *Message
	stdout, stderr *streamSink
	running        func() // the guest said the process exists (nil: not asked)
}

// CallTimeout bounds every request that is not a process's run (exec,
// exec_in_container):
// a guest that stops answering fails the call, naming it, instead of
// holding the host.
const CallTimeout = 60 * time.Second

// MaxStreamBuffer bounds the output of one stream waiting for its writer.
// The channel is shared: a writer that stalls must not stop the frames of
// other calls, so past this much its stream is dropped instead.
const MaxStreamBuffer = 16 << 20

// streamSink writes a call's stream from a goroutine of its own.
type streamSink struct {
	w       io.Writer
	name    string
	mu      sync.Mutex
	cond    *sync.Cond
	q       [][]byte
	queued  int
	closed  bool
	dropped bool
	done    chan struct{}
}

func newStreamSink(w io.Writer, name string) *streamSink {
	if w == nil {
		return nil
	}
	s := &streamSink{w: w, name: name, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.run()
	return s
}

// push queues b without blocking; past MaxStreamBuffer the stream is
// dropped.
func (s *streamSink) push(b []byte) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped || s.closed {
		return
	}
	if s.queued+len(b) > MaxStreamBuffer {
		s.dropped, s.q, s.queued = true, nil, 0
		slog.Warn("guest output dropped: its reader is too slow", "stream", s.name, "buffered", MaxStreamBuffer)
		return
	}
	s.q = append(s.q, b)
	s.queued += len(b)
	s.cond.Signal()
}

// close ends the stream; the writer gets what is queued, then done closes.
func (s *streamSink) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	s.cond.Signal()
	s.mu.Unlock()
}

// wait waits until what was queued has been written.
func (s *streamSink) wait() {
	if s != nil {
		<-s.done
	}
}

func (s *streamSink) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for len(s.q) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.q) == 0 {
			s.mu.Unlock()
			return
		}
		b := s.q[0]
		s.q = s.q[1:]
		s.queued -= len(b)
		s.mu.Unlock()
		s.w.Write(b)
	}
}

// Client talks to the guest agent. Safe for concurrent use.
type Client struct {
	conn    net.Conn
	writeMu sync.Mutex
	mu      sync.Mutex
	nextID  uint64
	calls   map[uint64]*call
	err     error
	done    chan struct{}
}

// Dial connects to the host end of the agent's virtio-serial port (a unix
// socket QEMU serves) and performs the handshake. It retries until ctx ends,
// since the guest may still be booting.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var lastErr error
	for {
		c, err := dialOnce(ctx, socket)
		if err == nil {
			return c, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest agent did not answer on %s: %w (last error: %v)", socket, ctx.Err(), lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func dialOnce(ctx context.Context, socket string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	return Connect(ctx, conn)
}

// Connect runs the protocol over conn, an established connection to the
// agent's channel, after a version handshake. It closes conn on failure.
func Connect(ctx context.Context, conn net.Conn) (*Client, error) {
	c := NewClient(conn)
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var res HelloResult
	if err := c.call(hctx, OpHello, HelloArgs{Version: Version}, &res, nil, nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	if res.Version != Version {
		c.Close()
		return nil, fmt.Errorf("guest agent speaks protocol %d, host %d", res.Version, Version)
	}
	return c, nil
}

// NewClient runs the protocol over an established connection (no handshake).
func NewClient(conn net.Conn) *Client {
	c := &Client{conn: conn, calls: map[uint64]*call{}, done: make(chan struct{})}
	go c.readLoop()
	return c
}

func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.conn, 64<<10)
	var err error
	for {
		var m *Message
		m, err = ReadFrame(r)
		if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrMalformed) {
			continue
		}
		if err != nil {
			break
		}
		c.mu.Lock()
		cl := c.calls[m.ID]
		if cl != nil && m.Done {
			delete(c.calls, m.ID)
		}
		c.mu.Unlock()
		if cl == nil {
			continue // a reply to a call from an earlier session
		}
		switch {
		case m.Done:
			cl.done <- m
		case m.Stream == "stdout":
			cl.stdout.push(m.Data)
		case m.Stream == "stderr":
			cl.stderr.push(m.Data)
		case m.Stream == StreamRunning && cl.running != nil:
			cl.running()
		}
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrDisconnected, err)
	for id, cl := range c.calls {
		close(cl.done)
		delete(c.calls, id)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) send(m *Message) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := WriteFrame(c.conn, m); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("send to guest agent: %w", err)
		}
		// A channel that cannot be written is lost, whether or not the
		// reader has seen its end yet.
		return fmt.Errorf("send to guest agent: %w: %w", ErrDisconnected, err)
	}
	return nil
}

// call sends a request and waits for its final frame; started, if set, is
// called with the request id once it is sent.
func (c *Client) call(ctx context.Context, op string, args, result any, stdout, stderr io.Writer, started func(uint64)) error {
	return c.callProcess(ctx, op, args, result, stdout, stderr, started, nil)
}

// callProcess is call for a process's run: running, if set, is called
// (from the reader) when the guest says the process exists.
func (c *Client) callProcess(ctx context.Context, op string, args, result any, stdout, stderr io.Writer, started func(uint64), running func()) error {
	b, err := json.Marshal(args)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok && op != OpExec && op != OpExecInContainer {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, CallTimeout)
		defer cancel()
	}
	cl := &call{done: make(chan *Message, 1), stdout: newStreamSink(stdout, "stdout"), stderr: newStreamSink(stderr, "stderr"), running: running}
	defer func() {
		cl.stdout.close()
		cl.stderr.close()
	}()
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := c.nextID
	c.calls[id] = cl
	c.mu.Unlock()
	if err := c.send(&Message{ID: id, Op: op, Args: b}); err != nil {
		c.forget(id)
		return err
	}
	if started != nil {
		started(id)
	}
	select {
	case m, ok := <-cl.done:
		// The output came before the reply: deliver it all first.
		cl.stdout.close()
		cl.stderr.close()
		cl.stdout.wait()
		cl.stderr.wait()
		if !ok {
			return fmt.Errorf("%s: %w", op, c.Err())
		}
		if m.Error != nil {
			return m.Error
		}
		if result != nil && len(m.Result) > 0 {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("guest agent %s: no answer in time (deadline %v): %w", op, CallTimeout, ctx.Err())
		}
		return fmt.Errorf("guest agent %s: %w", op, ctx.Err())
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.calls, id)
	c.mu.Unlock()
}

// Done is closed when the connection is lost.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended (nil while it is up).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection (the guest keeps running).
func (c *Client) Close() error { return c.conn.Close() }

// MountSCSI mounts the disk at controller/LUN (partition 0 = whole disk).
func (c *Client) MountSCSI(ctx context.Context, a MountSCSIArgs) error {
	return c.call(ctx, OpMountSCSI, a, nil, nil, nil, nil)
}

// MountPmem mounts the pmem device whose region starts at addr.
func (c *Client) MountPmem(ctx context.Context, a MountPmemArgs) error {
	return c.call(ctx, OpMountPmem, a, nil, nil, nil, nil)
}

// MountVirtiofs mounts a virtiofs tag.
func (c *Client) MountVirtiofs(ctx context.Context, tag string, readOnly bool, target string) error {
	return c.call(ctx, OpMountVirtiofs, MountVirtiofsArgs{Tag: tag, ReadOnly: readOnly, Target: target}, nil, nil, nil, nil)
}

// Unmount unmounts path and removes the directory if empty.
func (c *Client) Unmount(ctx context.Context, path string) error {
	return c.call(ctx, OpUnmount, PathArgs{Path: path}, nil, nil, nil, nil)
}

// CombineLayers mounts an overlay of lowers (top-most first) at target.
func (c *Client) CombineLayers(ctx context.Context, lowers []string, upper, work, target string) error {
	return c.call(ctx, OpCombineLayers, CombineArgs{Lowers: lowers, Upper: upper, Work: work, Target: target}, nil, nil, nil, nil)
}

// RemoveCombinedLayers unmounts an overlay made by CombineLayers.
func (c *Client) RemoveCombinedLayers(ctx context.Context, target string) error {
	return c.call(ctx, OpRemoveCombined, PathArgs{Path: target}, nil, nil, nil, nil)
}

// Mkdir creates a directory and its parents.
func (c *Client) Mkdir(ctx context.Context, path string) error {
	return c.call(ctx, OpMkdir, PathArgs{Path: path}, nil, nil, nil, nil)
}

// BindMount binds source onto target (created as a file or directory).
func (c *Client) BindMount(ctx context.Context, source, target string, readOnly bool) error {
	return c.call(ctx, OpBindMount, BindArgs{Source: source, Target: target, ReadOnly: readOnly}, nil, nil, nil, nil)
}

// Stat describes a guest path.
func (c *Client) Stat(ctx context.Context, path string) (StatResult, error) {
	var r StatResult
	err := c.call(ctx, OpStat, PathArgs{Path: path}, &r, nil, nil, nil)
	return r, err
}

// List names a guest directory's entries.
func (c *Client) List(ctx context.Context, path string) ([]string, error) {
	var r ListResult
	err := c.call(ctx, OpList, PathArgs{Path: path}, &r, nil, nil, nil)
	return r.Names, err
}

// SetIdentity reseeds the guest RNG, sets its clock and hostname, and
// checks what the guest reports back.
func (c *Client) SetIdentity(ctx context.Context, a IdentityArgs) (IdentityResult, error) {
	var r IdentityResult
	if err := c.call(ctx, OpSetIdentity, a, &r, nil, nil, nil); err != nil {
		return r, err
	}
	switch {
	case r.Hostname != a.Hostname:
		return r, fmt.Errorf("guest agent: hostname is %q after setting %q", r.Hostname, a.Hostname)
	case r.UnixNano < a.UnixNano:
		return r, fmt.Errorf("guest agent: clock reads %d after setting %d", r.UnixNano, a.UnixNano)
	case len(r.Random) != 16:
		return r, fmt.Errorf("guest agent: %d random bytes, want 16", len(r.Random))
	}
	return r, nil
}

// Shutdown asks the guest to power off.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, OpShutdown, struct{}{}, nil, nil, nil, nil)
}

// ExecRequest describes a process to run in the guest itself (not in a
// container: for tests and diagnostics).
type ExecRequest struct {
	Args           []string
	Env            []string
	Cwd            string
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec runs a process and returns its exit code. A command that does not
// exist fails with code CodeExecNotFound.
func (c *Client) Exec(ctx context.Context, r ExecRequest) (int, error) {
	var res ExecResult
	args := ExecArgs{Args: r.Args, Env: r.Env, Cwd: r.Cwd, Stdin: r.Stdin != nil}
	err := c.call(ctx, OpExec, args, &res, r.Stdout, r.Stderr, func(id uint64) { c.feedStdin(id, r.Stdin) })
	return res.ExitCode, err
}

func (c *Client) feedStdin(id uint64, stdin io.Reader) {
	if stdin == nil {
		return
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if c.send(&Message{ID: id, Op: OpStdin, Stream: "stdin", Data: append([]byte(nil), buf[:n]...)}) != nil {
					return
				}
			}
			if err != nil {
				c.send(&Message{ID: id, Op: OpStdin, Stream: "stdin", EOF: true})
				return
			}
		}
	}()
}

// ContainerRequest is a container to run in the guest with its OCI runtime.
type ContainerRequest struct {
	ID   string
	Spec *specs.Spec // Root.Path: the container's root in the guest
	// Stdin (nil: empty) is copied to it; with a terminal all its output
	// arrives on Stdout.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ControlTimeout bounds a signal or resize request to the guest: a guest
// that does not answer must not hang the host.
const ControlTimeout = 10 * time.Second

// Container is a container, or a process exec'd in one, running in the
// guest.
type Container struct {
	c           *Client
	id          uint64
	sent        chan struct{}
	running     chan struct{}
	runningOnce sync.Once
	done        chan struct{}
	code        int
	oom         bool
	err         error
}

// StartContainer starts a container; Wait gives its exit status (128+N
// after signal N). The guest refuses a user or command its root does not
// have, through Wait.
func (c *Client) StartContainer(ctx context.Context, r ContainerRequest) *Container {
	args := ExecArgs{Container: r.ID, Spec: r.Spec, Stdin: r.Stdin != nil}
	return c.startProcess(ctx, OpExec, args, r.Stdin, r.Stdout, r.Stderr)
}

// ExecInContainerRequest is a process to run in a running container.
type ExecInContainerRequest struct {
	Container string
	// Process is run as the container's runtime runs an exec: with a
	// terminal of its own when Process.Terminal (all output on Stdout).
	Process        *specs.Process
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ExecInContainer runs a process in a running container; Wait gives its
// exit status (128+N after signal N), Signal and Resize reach it. A
// command the container's root does not have fails Wait with code
// CodeExecNotFound.
func (c *Client) ExecInContainer(ctx context.Context, r ExecInContainerRequest) *Container {
	args := ExecInContainerArgs{Container: r.Container, Process: r.Process, Stdin: r.Stdin != nil}
	return c.startProcess(ctx, OpExecInContainer, args, r.Stdin, r.Stdout, r.Stderr)
}

func (c *Client) startProcess(ctx context.Context, op string, args any, stdin io.Reader, stdout, stderr io.Writer) *Container {
	ct := &Container{c: c, sent: make(chan struct{}), running: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ct.done)
		var res ExecResult
		ct.err = c.callProcess(ctx, op, args, &res, stdout, stderr, func(id uint64) {
			ct.id = id
			close(ct.sent)
			c.feedStdin(id, stdin)
		}, func() { ct.runningOnce.Do(func() { close(ct.running) }) })
		ct.code, ct.oom = res.ExitCode, res.OOMKilled
	}()
	return ct
}

// ContainerPids lists the guest pids of a running container's processes.
func (c *Client) ContainerPids(ctx context.Context, id string) ([]int, error) {
	var r PidsResult
	err := c.call(ctx, OpContainerPids, ContainerArgs{Container: id}, &r, nil, nil, nil)
	return r.Pids, err
}

// ContainerInit returns the guest pid of a running container's init.
func (c *Client) ContainerInit(ctx context.Context, id string) (int, error) {
	var r PidsResult
	if err := c.call(ctx, OpContainerPids, ContainerArgs{Container: id}, &r, nil, nil, nil); err != nil {
		return 0, err
	}
	if r.Init <= 0 {
		return 0, fmt.Errorf("container %s: the guest did not tell its init's pid", id)
	}
	return r.Init, nil
}

// ConfigureNetwork configures the guest's network cards and routes.
func (c *Client) ConfigureNetwork(ctx context.Context, a NetworkArgs) error {
	return c.call(ctx, OpConfigureNetwork, a, nil, nil, nil, nil)
}

// ContainerStats returns a running container's cgroup v2 statistics files.
func (c *Client) ContainerStats(ctx context.Context, id string) (map[string]string, error) {
	var r CgroupStatsResult
	err := c.call(ctx, OpContainerStats, ContainerArgs{Container: id}, &r, nil, nil, nil)
	return r.Files, err
}

// PauseContainer freezes a running container's processes.
func (c *Client) PauseContainer(ctx context.Context, id string) error {
	return c.call(ctx, OpPauseContainer, ContainerArgs{Container: id}, nil, nil, nil, nil)
}

// UpdateContainer changes a running container's resource limits.
func (c *Client) UpdateContainer(ctx context.Context, id string, res *specs.LinuxResources) error {
	return c.call(ctx, OpUpdateContainer, UpdateArgs{Container: id, Resources: res}, nil, nil, nil, nil)
}

// ResumeContainer thaws a paused container.
func (c *Client) ResumeContainer(ctx context.Context, id string) error {
	return c.call(ctx, OpResumeContainer, ContainerArgs{Container: id}, nil, nil, nil, nil)
}

// Done is closed when the container has exited (or the call failed).
func (ct *Container) Done() <-chan struct{} { return ct.done }

// Running is closed once the guest says the process exists; never when
// it does not start (Done closes then).
func (ct *Container) Running() <-chan struct{} { return ct.running }

// OOMKilled tells, once Done, whether the OOM killer killed a process of
// the container while it ran.
func (ct *Container) OOMKilled() bool {
	<-ct.done
	return ct.oom
}

// Wait returns the container's exit status.
func (ct *Container) Wait() (int, error) {
	<-ct.done
	return ct.code, ct.err
}

// The arguments are made once the start request is sent: they name it by
// its id, which is only known then (a signal that came first named
// request 0, and the guest found no such container).
func (ct *Container) control(ctx context.Context, op string, args func(exec uint64) any) error {
	select {
	case <-ct.sent:
	case <-ct.done:
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ControlTimeout)
	defer cancel()
	return ct.c.call(ctx, op, args(ct.id), nil, nil, nil, nil)
}

// Signal sends sig to the container's init (to the exec'd process).
func (ct *Container) Signal(ctx context.Context, sig syscall.Signal) error {
	return ct.control(ctx, OpSignal, func(exec uint64) any { return SignalArgs{Exec: exec, Signal: int(sig)} })
}

// Resize sets the container's (the exec'd process's) terminal size.
func (ct *Container) Resize(ws console.WinSize) error {
	return ct.control(context.Background(), OpResize, func(exec uint64) any {
		return ResizeArgs{Exec: exec, Width: ws.Width, Height: ws.Height}
	})
}
