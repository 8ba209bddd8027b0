package hostrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A Helper is the process a command of Run becomes: started ahead of its
// command in new PID, UTS and IPC namespaces, past its own start-up, and
// waiting on a socket for the command, its confinement and its stdio. It
// makes its mount namespace only when the command arrives, so it sees
// what was mounted in between (the container's root). Starting one is most
// of what Run costs in a TCG guest (a Go program starting up), so the
// utility VM's agent keeps one ready.
type Helper struct {
	cmd    *exec.Cmd
	sock   *os.File
	exited chan struct{}
	err    error // from Wait, once exited is closed

	readyOnce sync.Once
	readyErr  error
}

// ErrHelperGone means the helper died before it took its command: nothing
// ran, and a fresh helper may run it.
var ErrHelperGone = errors.New("hostrun: helper exited before taking its command")

// helperFD is where the helper finds its end of the socket.
const helperFD = 3

// StartHelper starts a helper; Run gives it its command, Close ends it
// unused.
func StartHelper() (*Helper, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("hostrun: %w", err)
	}
	// Datagrams with boundaries: one message is the whole command.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("hostrun: helper socket: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "helper"), os.NewFile(uintptr(fds[1]), "helper")
	defer theirs.Close()
	cmd := exec.Command(self, InitArg)
	cmd.Env = []string{}
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		ours.Close()
		return nil, fmt.Errorf("hostrun: start helper: %w", err)
	}
	h := &Helper{cmd: cmd, sock: ours, exited: make(chan struct{})}
	go func() { h.err = cmd.Wait(); close(h.exited) }()
	return h, nil
}

// Ready waits until the helper has started up and waits for its command
// (it says so with a one-byte message); ErrHelperGone if it died first.
func (h *Helper) Ready() error {
	h.readyOnce.Do(func() {
		var b [1]byte
		n, err := h.sock.Read(b[:])
		if n != 1 {
			h.readyErr = fmt.Errorf("%w (%v)", ErrHelperGone, err)
		}
	})
	return h.readyErr
}

// Close ends an unused helper: it exits when its socket closes.
func (h *Helper) Close() {
	h.sock.Close()
	select {
	case <-h.exited:
	case <-time.After(5 * time.Second):
		h.cmd.Process.Kill()
		<-h.exited
	}
}

// Run runs the command in the helper and returns its exit code. A
// cancelled ctx kills it. The helper is used up either way.
func (h *Helper) Run(ctx context.Context, o Options) (int, error) {
	if err := o.check(); err != nil {
		h.Close()
		return 0, err
	}
	c, err := o.config()
	if err != nil {
		h.Close()
		return 0, err
	}
	msg, err := json.Marshal(c)
	if err != nil {
		h.Close()
		return 0, fmt.Errorf("hostrun: %w", err)
	}
	if err := h.Ready(); err != nil {
		h.Close()
		return 0, err
	}
	st, err := newStdio(o)
	if err != nil {
		h.Close()
		return 0, err
	}
	defer st.close()
	err = unix.Sendmsg(int(h.sock.Fd()), msg, unix.UnixRights(st.fds()...), nil, 0)
	st.sent()
	if err != nil {
		h.Close()
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ECONNRESET) {
			return 0, fmt.Errorf("%w: %v", ErrHelperGone, err)
		}
		return 0, fmt.Errorf("hostrun: send the command to the helper: %w", err)
	}
	h.sock.Close()
	select {
	case <-h.exited:
	case <-ctx.Done():
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(3 * time.Second):
			h.cmd.Process.Kill()
			<-h.exited
		}
	}
	// Output copying may outlive the command (a daemon it left holding
	// stdout): bound it.
	st.drain(2 * time.Second)
	var ee *exec.ExitError
	if errors.As(h.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), ctx.Err()
		}
		return ee.ExitCode(), ctx.Err()
	}
	if h.err != nil {
		return 0, fmt.Errorf("hostrun: %w", h.err)
	}
	return 0, ctx.Err()
}

// stdio is the command's stdin, stdout and stderr as files for the helper,
// with pipes copied to the Options' writers where those are not files.
type stdio struct {
	files   [3]*os.File
	ours    []*os.File // to close once sent
	readers []*os.File // pipe ends we copy from
	closeIn func()
	copying sync.WaitGroup
}

func newStdio(o Options) (_ *stdio, err error) {
	st := &stdio{closeIn: func() {}}
	defer func() {
		if err != nil {
			st.sent()
			st.close()
		}
	}()
	in, closeIn, err := FileStdin(o.Stdin)
	if err != nil {
		return nil, err
	}
	st.closeIn = closeIn
	st.files[0] = in
	for i, w := range []io.Writer{o.Stdout, o.Stderr} {
		if f, ok := w.(*os.File); ok && f != nil {
			st.files[i+1] = f
			continue
		}
		if w == nil {
			continue
		}
		if i == 1 && sameWriter(o.Stderr, o.Stdout) {
			// One writer, one pipe (as os/exec does): no concurrent writes.
			st.files[2] = st.files[1]
			continue
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("hostrun: %w", err)
		}
		st.files[i+1] = pw
		st.ours = append(st.ours, pw)
		st.readers = append(st.readers, pr)
		st.copying.Add(1)
		go func() {
			defer st.copying.Done()
			io.Copy(w, pr)
		}()
	}
	for i, f := range st.files {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("hostrun: %w", err)
			}
			st.files[i] = null
			st.ours = append(st.ours, null)
		}
	}
	return st, nil
}

// sameWriter reports whether a and b are the same writer; writers of
// uncomparable types never are.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

func (st *stdio) fds() []int {
	return []int{int(st.files[0].Fd()), int(st.files[1].Fd()), int(st.files[2].Fd())}
}

// sent closes our copies of what the helper now holds, so that the pipes
// end when the command's side closes.
func (st *stdio) sent() {
	for _, f := range st.ours {
		f.Close()
	}
	st.ours = nil
}

// drain waits up to d for the output to be copied, then stops copying.
func (st *stdio) drain(d time.Duration) {
	done := make(chan struct{})
	go func() { st.copying.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		for _, r := range st.readers {
			r.Close()
		}
		<-done
	}
}

func (st *stdio) close() {
	for _, r := range st.readers {
		r.Close()
	}
	st.closeIn()
}

// receive is the helper's side: it waits for the command and takes its
// stdio; nil means the socket was closed without one.
func receive() (*initConfig, error) {
	if _, err := unix.Write(helperFD, []byte{'r'}); err != nil {
		return nil, fmt.Errorf("say ready: %w", err)
	}
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, flags, _, err := unix.Recvmsg(helperFD, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("receive the command: %w", err)
	}
	if n == 0 && oobn == 0 {
		return nil, nil
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return nil, errors.New("command message truncated")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("command without stdio (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 3 {
		return nil, fmt.Errorf("command with %d stdio files (%v)", len(fds), err)
	}
	for i, fd := range fds {
		// Received descriptors are above ours (0-3), so dup3 never gets
		// fd == i; the copies on 0-2 are not close-on-exec.
		if err := unix.Dup3(fd, i, 0); err != nil {
			return nil, fmt.Errorf("stdio %d: %w", i, err)
		}
		unix.Close(fd)
	}
	unix.Close(helperFD)
	var c initConfig
	if err := json.Unmarshal(buf[:n], &c); err != nil {
		return nil, fmt.Errorf("bad command message: %w", err)
	}
	if len(c.Args) == 0 {
		return nil, errors.New("command message without a command")
	}
	return &c, nil
}
