package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerd/console"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/inroot"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/layers/overlay"
	"github.com/layervisor/layervisor/pkg/ociruntime"
)

// Server serves one host channel.
type Server struct {
	// Roots are the directories requests may name; nil is
	// guestpath.AllowedRoots, what the shipped agent allows. Tests give
	// their own.
	Roots []string
	// Poweroff is called after a shutdown request is answered.
	Poweroff func()

	// Runtime runs containers; nil uses the initramfs's OCI runtime.
	Runtime *ociruntime.Runtime

	rw         io.ReadWriter
	writeMu    sync.Mutex
	mu         sync.Mutex
	stdins     map[uint64]*stdinFeed
	containers map[uint64]*runningContainer
}

// runningContainer is a container started by an exec request, or a
// process exec'd in one by an exec_in_container request; signal and resize
// requests find it by that request's id.
type runningContainer struct {
	started chan struct{} // closed once p is set (or the start failed)
	p       *ociruntime.Process
	// A container's (not an exec'd process's) id, set when the request
	// is registered, and its root, set before started closes: requests
	// naming the container find it, and wait for its start.
	name, root string
}

// Serve reads requests from rw until it fails.
func (s *Server) Serve(ctx context.Context, rw io.ReadWriter) error {
	s.rw = rw
	s.stdins = map[uint64]*stdinFeed{}
	s.containers = map[uint64]*runningContainer{}
	if s.Roots == nil {
		s.Roots = guestpath.AllowedRoots()
	}
	if s.Runtime == nil {
		s.Runtime = &ociruntime.Runtime{Binary: guestpath.RuntimeBinary, StateDir: guestpath.RuntimeState, NoPivot: true}
	}
	r := bufio.NewReaderSize(rw, 64<<10)
	for {
		m, err := agent.ReadFrame(r)
		switch {
		case errors.Is(err, agent.ErrTooLarge):
			s.reply(0, nil, &agent.Error{Code: agent.CodeTooLarge, Message: fmt.Sprintf("message exceeds %d bytes", agent.MaxMessage)})
			continue
		case errors.Is(err, agent.ErrMalformed):
			s.reply(0, nil, &agent.Error{Code: agent.CodeInvalid, Message: err.Error()})
			continue
		case err != nil:
			return err
		}
		if m.Op == agent.OpStdin {
			s.mu.Lock()
			f := s.stdins[m.ID]
			s.mu.Unlock()
			if f != nil {
				f.push(m.Data, m.EOF)
			}
			continue
		}
		if m.Op == agent.OpExec || m.Op == agent.OpExecInContainer {
			// Open the process's stdin before reading the next frame: the
			// host sends stdin right after the request, and frames that
			// arrived before the handler ran would be lost.
			stdin, container, name := false, false, ""
			if m.Op == agent.OpExec {
				if a, err := decode[agent.ExecArgs](m); err == nil {
					stdin, container, name = a.Stdin, a.Spec != nil, a.Container
				}
			} else if a, err := decode[agent.ExecInContainerArgs](m); err == nil {
				stdin, container = a.Stdin, true
			}
			s.mu.Lock()
			if stdin {
				s.stdins[m.ID] = newStdinFeed()
			}
			if container {
				// Registered before the next frame is read, so a
				// signal right behind the request finds it.
				s.containers[m.ID] = &runningContainer{started: make(chan struct{}), name: name}
			}
			s.mu.Unlock()
		}
		go s.handle(ctx, m)
	}
}

func (s *Server) send(m *agent.Message) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := agent.WriteFrame(s.rw, m); err != nil {
		slog.Warn("agent: send", "err", err)
	}
}

func (s *Server) reply(id uint64, result any, err error) {
	m := &agent.Message{ID: id, Done: true}
	if err != nil {
		var ae *agent.Error
		if !errors.As(err, &ae) {
			code := agent.CodeInternal
			if errors.Is(err, os.ErrNotExist) {
				code = agent.CodeNotFound
			}
			ae = &agent.Error{Code: code, Message: err.Error()}
		}
		m.Error = ae
	} else if result != nil {
		m.Result, _ = json.Marshal(result)
	}
	s.send(m)
}

func decode[T any](m *agent.Message) (T, error) {
	var v T
	if err := json.Unmarshal(m.Args, &v); err != nil {
		return v, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("%s arguments: %v", m.Op, err)}
	}
	return v, nil
}

func (s *Server) handle(ctx context.Context, m *agent.Message) {
	var result any
	var err error
	switch m.Op {
	case agent.OpHello:
		var a agent.HelloArgs
		if a, err = decode[agent.HelloArgs](m); err == nil {
			var u unix.Utsname
			unix.Uname(&u)
			result = agent.HelloResult{Version: agent.Version, Kernel: unix.ByteSliceToString(u.Release[:])}
			_ = a
		}
	case agent.OpMountSCSI:
		var a agent.MountSCSIArgs
		if a, err = decode[agent.MountSCSIArgs](m); err == nil {
			err = s.mountSCSI(ctx, a)
		}
	case agent.OpMountPmem:
		var a agent.MountPmemArgs
		if a, err = decode[agent.MountPmemArgs](m); err == nil {
			err = s.mountPmem(ctx, a)
		}
	case agent.OpMountVirtiofs:
		var a agent.MountVirtiofsArgs
		if a, err = decode[agent.MountVirtiofsArgs](m); err == nil {
			err = s.mountVirtiofs(ctx, a)
		}
	case agent.OpUnmount, agent.OpRemoveCombined:
		var a agent.PathArgs
		if a, err = decode[agent.PathArgs](m); err == nil {
			err = s.unmount(a.Path)
		}
	case agent.OpCombineLayers:
		var a agent.CombineArgs
		if a, err = decode[agent.CombineArgs](m); err == nil {
			err = s.combine(a)
		}
	case agent.OpMkdir:
		var a agent.PathArgs
		if a, err = decode[agent.PathArgs](m); err == nil {
			err = s.mkdir(a.Path)
		}
	case agent.OpBindMount:
		var a agent.BindArgs
		if a, err = decode[agent.BindArgs](m); err == nil {
			err = s.bind(a)
		}
	case agent.OpExec:
		var a agent.ExecArgs
		if a, err = decode[agent.ExecArgs](m); err == nil {
			result, err = s.exec(ctx, m.ID, a)
		}
	case agent.OpExecInContainer:
		var a agent.ExecInContainerArgs
		if a, err = decode[agent.ExecInContainerArgs](m); err == nil {
			result, err = s.execInContainer(ctx, m.ID, a)
		}
	case agent.OpContainerPids:
		var a agent.ContainerArgs
		if a, err = decode[agent.ContainerArgs](m); err == nil {
			result, err = s.containerPids(ctx, a.Container)
		}
	case agent.OpContainerStats:
		var a agent.ContainerArgs
		if a, err = decode[agent.ContainerArgs](m); err == nil {
			result, err = s.containerStats(ctx, a.Container)
		}
	case agent.OpPauseContainer, agent.OpResumeContainer:
		var a agent.ContainerArgs
		if a, err = decode[agent.ContainerArgs](m); err == nil {
			err = s.pauseContainer(ctx, a.Container, m.Op == agent.OpPauseContainer)
		}
	case agent.OpUpdateContainer:
		var a agent.UpdateArgs
		if a, err = decode[agent.UpdateArgs](m); err == nil {
			err = s.updateContainer(ctx, a)
		}
	case agent.OpConfigureNetwork:
		var a agent.NetworkArgs
		if a, err = decode[agent.NetworkArgs](m); err == nil {
			err = configureNetwork(ctx, a)
		}
	case agent.OpSignal:
		var a agent.SignalArgs
		if a, err = decode[agent.SignalArgs](m); err == nil {
			err = s.withContainer(ctx, a.Exec, func(p *ociruntime.Process) error {
				return p.Signal(ctx, syscall.Signal(a.Signal))
			})
		}
	case agent.OpResize:
		var a agent.ResizeArgs
		if a, err = decode[agent.ResizeArgs](m); err == nil {
			err = s.withContainer(ctx, a.Exec, func(p *ociruntime.Process) error {
				return p.Resize(console.WinSize{Width: a.Width, Height: a.Height})
			})
		}
	case agent.OpStat:
		var a agent.PathArgs
		if a, err = decode[agent.PathArgs](m); err == nil {
			result, err = s.stat(a.Path)
		}
	case agent.OpList:
		var a agent.PathArgs
		if a, err = decode[agent.PathArgs](m); err == nil {
			result, err = s.list(a.Path)
		}
	case agent.OpSetIdentity:
		var a agent.IdentityArgs
		if a, err = decode[agent.IdentityArgs](m); err == nil {
			result, err = setIdentity(a)
		}
	case agent.OpShutdown:
		s.reply(m.ID, nil, nil)
		if s.Poweroff != nil {
			s.Poweroff()
		}
		return
	default:
		err = &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("unknown operation %q", m.Op)}
	}
	s.reply(m.ID, result, err)
}

func (s *Server) confine(p string) (string, error) { return confine(s.Roots, p) }

// mountDev mounts a block device at target, creating target.
func (s *Server) mountDev(dev, target, fsType string, readOnly bool) error {
	t, err := s.confine(target)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(t, 0o755); err != nil {
		return err
	}
	if fsType == "" {
		fsType = "ext4"
	}
	var flags uintptr
	data := ""
	if readOnly {
		flags |= unix.MS_RDONLY
		if fsType == "ext4" {
			data = "noload"
		}
	}
	if err := unix.Mount(dev, t, fsType, flags, data); err != nil {
		return fmt.Errorf("mount %s at %s: %w", dev, t, err)
	}
	return nil
}

// waitFor polls until f returns a non-empty string or the deadline passes.
func waitFor(ctx context.Context, what string, f func() string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if v := f(); v != "" {
			return v, nil
		}
		if time.Now().After(deadline) {
			return "", &agent.Error{Code: agent.CodeNotFound, Message: what + " did not appear in the guest"}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// scsiHosts lists the virtio-scsi hosts in PCI order: controller i is the
// i-th, as QEMU creates them in command-line order.
func scsiHosts() []string {
	hosts, _ := filepath.Glob("/sys/class/scsi_host/host*")
	type h struct{ name, dev string }
	var hs []h
	for _, p := range hosts {
		dev, err := filepath.EvalSymlinks(filepath.Join(p, "device"))
		if err != nil {
			continue
		}
		hs = append(hs, h{strings.TrimPrefix(filepath.Base(p), "host"), dev})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].dev < hs[j].dev })
	var out []string
	for _, x := range hs {
		out = append(out, x.name)
	}
	return out
}

func (s *Server) mountSCSI(ctx context.Context, a agent.MountSCSIArgs) error {
	find := func() string {
		hosts := scsiHosts()
		if a.Controller >= len(hosts) {
			return ""
		}
		sdev := fmt.Sprintf("/sys/bus/scsi/devices/%s:0:0:%d", hosts[a.Controller], a.LUN)
		if st, err := os.ReadFile(sdev + "/state"); err != nil || strings.TrimSpace(string(st)) != "running" {
			return ""
		}
		blocks, _ := filepath.Glob(sdev + "/block/*")
		if len(blocks) == 0 {
			return ""
		}
		name := filepath.Base(blocks[0])
		if a.Partition > 0 {
			name += strconv.Itoa(a.Partition)
		}
		if _, err := os.Stat("/dev/" + name); err != nil {
			return ""
		}
		return "/dev/" + name
	}
	return s.mountWhenReady(ctx, fmt.Sprintf("SCSI disk %d:%d", a.Controller, a.LUN), find, a.Target, a.FSType, a.ReadOnly)
}

// mountWhenReady waits for find to name the device node, then mounts it.
// A node can exist before its disk can be opened: a freshly plugged device
// may still be probing, and right after a disk left a SCSI LUN its
// successor can briefly be shadowed by the old device's remains. Both fail
// the mount with ENXIO, ENODEV or ENOENT, so those are retried until the
// deadline.
func (s *Server) mountWhenReady(ctx context.Context, what string, find func() string, target, fsType string, readOnly bool) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		dev, err := waitFor(ctx, what, find)
		if err != nil {
			return err
		}
		err = s.mountDev(dev, target, fsType, readOnly)
		if err == nil || !(errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) mountPmem(ctx context.Context, a agent.MountPmemArgs) error {
	find := func() string {
		regions, _ := filepath.Glob("/sys/bus/nd/devices/region*")
		for _, r := range regions {
			b, err := os.ReadFile(filepath.Join(r, "resource"))
			if err != nil {
				continue
			}
			addr, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 64)
			if err != nil || addr != a.Addr {
				continue
			}
			blocks, _ := filepath.Glob(filepath.Join(r, "namespace*", "block", "pmem*"))
			for _, bl := range blocks {
				if _, err := os.Stat("/dev/" + filepath.Base(bl)); err == nil {
					return "/dev/" + filepath.Base(bl)
				}
			}
		}
		return ""
	}
	return s.mountWhenReady(ctx, fmt.Sprintf("pmem region at %#x", a.Addr), find, a.Target, a.FSType, true)
}

func (s *Server) mountVirtiofs(ctx context.Context, a agent.MountVirtiofsArgs) error {
	t, err := s.confine(a.Target)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(t, 0o755); err != nil {
		return err
	}
	var flags uintptr
	if a.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	// The device may still be probing right after the hot-plug.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err = unix.Mount(a.Tag, t, "virtiofs", flags, "")
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mount virtiofs %s at %s: %w", a.Tag, t, err)
	}
	return nil
}

func (s *Server) unmount(p string) error {
	t, err := s.confine(p)
	if err != nil {
		return err
	}
	if err := unix.Unmount(t, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		if errors.Is(err, unix.ENOENT) {
			return &agent.Error{Code: agent.CodeNotFound, Message: t + " does not exist"}
		}
		return fmt.Errorf("unmount %s: %w", t, err)
	}
	os.Remove(t) // only if empty
	return nil
}

func (s *Server) combine(a agent.CombineArgs) error {
	if len(a.Lowers) == 0 {
		return &agent.Error{Code: agent.CodeInvalid, Message: "combine needs at least one lower layer"}
	}
	var lowers []string
	for _, l := range a.Lowers {
		c, err := s.confine(l)
		if err != nil {
			return err
		}
		lowers = append(lowers, c)
	}
	var paths [3]string
	for i, p := range []string{a.Upper, a.Work, a.Target} {
		c, err := s.confine(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(c, 0o755); err != nil {
			return err
		}
		paths[i] = c
	}
	// The host planned the overlay (layers.Plan); the guest checks it with
	// the same rules before mounting.
	opts, err := overlay.Mount{Lowers: lowers, Upper: paths[0], Work: paths[1]}.Options()
	if err != nil {
		return &agent.Error{Code: agent.CodeInvalid, Message: err.Error()}
	}
	// nodev: device nodes a layer carries never open (the runtime makes
	// the container's /dev).
	if err := unix.Mount("overlay", paths[2], "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("combine layers at %s: %w", paths[2], err)
	}
	return nil
}

func (s *Server) mkdir(p string) error {
	t, err := s.confine(p)
	if err != nil {
		return err
	}
	return os.MkdirAll(t, 0o755)
}

func (s *Server) bind(a agent.BindArgs) error {
	src, err := s.confine(a.Source)
	if err != nil {
		return err
	}
	dst, err := s.confine(a.Target)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if st.IsDir() {
		err = os.MkdirAll(dst, 0o755)
	} else {
		if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", src, dst, err)
	}
	if a.ReadOnly {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			unix.Unmount(dst, 0)
			return fmt.Errorf("make %s read-only: %w", dst, err)
		}
	}
	return nil
}

type streamWriter struct {
	s      *Server
	id     uint64
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), 256<<10)
		w.s.send(&agent.Message{ID: w.id, Stream: w.stream, Data: p[:n]})
		p = p[n:]
	}
	return total, nil
}

// stdin is the stdin of request id (nil: none); release ends it once the
// process has exited.
func (s *Server) stdin(id uint64) (_ io.Reader, release func()) {
	s.mu.Lock()
	feed := s.stdins[id]
	s.mu.Unlock()
	if feed == nil {
		return nil, func() {}
	}
	return feed.r, func() {
		s.mu.Lock()
		delete(s.stdins, id)
		s.mu.Unlock()
		feed.close()
	}
}

func (s *Server) exec(ctx context.Context, id uint64, a agent.ExecArgs) (any, error) {
	stdin, release := s.stdin(id)
	defer release()
	if len(a.Args) == 0 && a.Spec == nil {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: "exec needs a command"}
	}
	stdout, stderr := streamWriter{s, id, "stdout"}, streamWriter{s, id, "stderr"}
	if a.Spec != nil {
		return s.runContainer(ctx, id, a, stdin, stdout, stderr)
	}
	path, err := exec.LookPath(a.Args[0])
	if err != nil {
		return nil, &agent.Error{Code: agent.CodeExecNotFound, Message: fmt.Sprintf("%s: command not found", a.Args[0])}
	}
	cmd := exec.CommandContext(ctx, path, a.Args[1:]...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = a.Env, a.Cwd, stdout, stderr
	cmd.WaitDelay = 2 * time.Second
	in, closeIn, err := fileStdin(stdin)
	if err != nil {
		return nil, err
	}
	defer closeIn()
	cmd.Stdin = in
	err = cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil {
		return agent.ExecResult{ExitCode: cmd.ProcessState.ExitCode()}, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return agent.ExecResult{ExitCode: ee.ExitCode()}, nil
	}
	if err != nil {
		return nil, err
	}
	return agent.ExecResult{}, nil
}

// running returns the entry the frame reader registered for request id
// (signals and resizes wait on it), and a func that removes it, releasing
// waiters if the process never started.
func (s *Server) running(id uint64) (*runningContainer, func()) {
	s.mu.Lock()
	rc := s.containers[id]
	s.mu.Unlock()
	return rc, func() {
		s.mu.Lock()
		delete(s.containers, id)
		s.mu.Unlock()
		if rc != nil && rc.p == nil {
			close(rc.started)
		}
	}
}

// validContainerID accepts what the runtime and a bundle path can take.
var validContainerID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// runContainer runs a container with the guest's OCI runtime: its root
// and bind sources must be under the allowed roots; the user and the
// command are resolved in its root here, where the root is.
func (s *Server) runContainer(ctx context.Context, id uint64, a agent.ExecArgs, stdin io.Reader, stdout, stderr io.Writer) (_ any, err error) {
	rc, unregister := s.running(id)
	defer unregister()
	spec := a.Spec
	if !validContainerID.MatchString(a.Container) {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("container id %q: want letters, digits, '_', '.', '-'", a.Container)}
	}
	if spec.Process == nil || spec.Root == nil {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: "container spec needs a process and a root"}
	}
	root, err := s.confine(spec.Root.Path)
	if err != nil {
		return nil, err
	}
	spec.Root.Path = root
	for i, m := range spec.Mounts {
		if m.Type != "bind" && !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
			continue
		}
		if spec.Mounts[i].Source, err = s.confine(m.Source); err != nil {
			return nil, fmt.Errorf("mount %s: %w", m.Destination, err)
		}
	}
	if err := inroot.Resolve(spec, inroot.Dir(root)); err != nil {
		code := agent.CodeInvalid
		if errors.Is(err, inroot.ErrCommandNotFound) {
			code = agent.CodeExecNotFound
		}
		return nil, &agent.Error{Code: code, Message: err.Error()}
	}
	oomKilled, err := placeCgroup(spec, a.Container)
	if err != nil {
		return nil, err
	}
	bundle := guestpath.Bundle(a.Container)
	defer os.RemoveAll(bundle)
	p, err := s.Runtime.Start(ctx, ociruntime.Container{ID: a.Container, Bundle: bundle, Spec: spec,
		Stdin: stdin, Stdout: stdout, Stderr: stderr})
	if err != nil {
		oomKilled()
		return nil, err
	}
	if rc != nil {
		rc.root, rc.p = root, p
		close(rc.started)
	}
	s.send(&agent.Message{ID: id, Stream: agent.StreamRunning})
	code, err := p.Wait()
	return agent.ExecResult{ExitCode: code, OOMKilled: oomKilled()}, err
}

// withContainer runs f on the container started by exec request id,
// waiting for its start if need be.
func (s *Server) withContainer(ctx context.Context, id uint64, f func(*ociruntime.Process) error) error {
	s.mu.Lock()
	rc := s.containers[id]
	s.mu.Unlock()
	if rc == nil {
		return &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("no running container for request %d", id)}
	}
	select {
	case <-rc.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	if rc.p == nil {
		return &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("the container of request %d did not start", id)}
	}
	return f(rc.p)
}

// fileStdin turns a reader into an *os.File for a child's stdin, so that
// exec.Cmd.Wait does not wait for the reader to reach EOF (an interactive
// stream may never end). close releases it once the child has exited.
func fileStdin(r io.Reader) (*os.File, func(), error) {
	if r == nil {
		return nil, func() {}, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	go func() {
		io.Copy(pw, r)
		pw.Close()
	}()
	return pr, func() { pr.Close(); pw.Close() }, nil
}

func (s *Server) stat(p string) (any, error) {
	t, err := s.confine(p)
	if err != nil {
		return nil, err
	}
	st, err := os.Lstat(t)
	if err != nil {
		return nil, err
	}
	r := agent.StatResult{Mode: uint32(st.Mode()), Size: st.Size(), IsDir: st.IsDir()}
	if st.Mode()&os.ModeSymlink != 0 {
		r.Link, _ = os.Readlink(t)
	}
	return r, nil
}

func (s *Server) list(p string) (any, error) {
	t, err := s.confine(p)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(t)
	if err != nil {
		return nil, err
	}
	var r agent.ListResult
	for _, e := range ents {
		r.Names = append(r.Names, e.Name())
	}
	return r, nil
}

// stdinFeed queues the stdin frames of one process and writes them to its
// stdin pipe from its own goroutine, so the frame reader never blocks on a
// process that is slow to read, or never reads, its input.
type stdinFeed struct {
	r    *io.PipeReader
	w    *io.PipeWriter
	mu   sync.Mutex
	cond *sync.Cond
	q    [][]byte
	eof  bool
	done bool
}

func newStdinFeed() *stdinFeed {
	f := &stdinFeed{}
	f.r, f.w = io.Pipe()
	f.cond = sync.NewCond(&f.mu)
	go f.run()
	return f
}

func (f *stdinFeed) push(b []byte, eof bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(b) > 0 {
		f.q = append(f.q, b)
	}
	f.eof = f.eof || eof
	f.cond.Signal()
}

// close ends the feed once the process has exited.
func (f *stdinFeed) close() {
	f.mu.Lock()
	f.done = true
	f.cond.Signal()
	f.mu.Unlock()
	f.r.Close()
}

func (f *stdinFeed) run() {
	for {
		f.mu.Lock()
		for len(f.q) == 0 && !f.eof && !f.done {
			f.cond.Wait()
		}
		if f.done || (len(f.q) == 0 && f.eof) {
			f.mu.Unlock()
			f.w.Close()
			return
		}
		b := f.q[0]
		f.q = f.q[1:]
		f.mu.Unlock()
		if _, err := f.w.Write(b); err != nil {
			return // the process is gone
		}
	}
}
