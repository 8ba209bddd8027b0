package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/inroot"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/ociruntime"
)

// cgroupRoot is where the agent mounts the cgroup v2 hierarchy.
const cgroupRoot = "/sys/fs/cgroup"

// containerRoot returns the root of a container this agent runs, waiting
// for its start if need be (a request right behind the container's own
// finds it starting): requests about containers reach only those.
func (s *Server) containerRoot(ctx context.Context, name string) (string, error) {
	rc, err := s.startedContainer(ctx, name)
	if err != nil {
		return "", err
	}
	return rc.root, nil
}

// startedContainer is containerRoot's lookup: the container, started.
func (s *Server) startedContainer(ctx context.Context, name string) (*runningContainer, error) {
	if !validContainerID.MatchString(name) {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("container id %q: want letters, digits, '_', '.', '-'", name)}
	}
	var rc *runningContainer
	s.mu.Lock()
	for _, c := range s.containers {
		if c.name == name {
			rc = c
			break
		}
	}
	s.mu.Unlock()
	if rc == nil {
		return nil, &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("no running container %s", name)}
	}
	select {
	case <-rc.started:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if rc.p == nil {
		return nil, &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("container %s did not start", name)}
	}
	return rc, nil
}

// containerInit is a running container's init's pid, as the runtime
// wrote it at the start: asking the runtime (`crun state`) starts a
// process, ~0.5 s in a TCG guest, so it is asked only when it wrote none.
func (s *Server) containerInit(ctx context.Context, name string) (int, error) {
	rc, err := s.startedContainer(ctx, name)
	if err != nil {
		return 0, err
	}
	select {
	case <-rc.p.Done():
		// Its pid may name another process by now.
		return 0, &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("container %s has exited", name)}
	default:
	}
	if pid := rc.p.InitPid(); pid > 0 {
		return pid, nil
	}
	// The runtime wrote no pid file: ask it.
	st, err := s.Runtime.State(ctx, name)
	if err != nil {
		return 0, err
	}
	if st.Pid <= 0 {
		return 0, &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("container %s has no process (%s)", name, st.Status)}
	}
	return st.Pid, nil
}

// execInContainer runs a process in a running container with the runtime's
// exec, as request id (signal and resize requests find it by that id).
func (s *Server) execInContainer(ctx context.Context, id uint64, a agent.ExecInContainerArgs) (_ any, err error) {
	rc, unregister := s.running(id)
	defer unregister()
	stdin, release := s.stdin(id)
	defer release()
	if a.Process == nil || len(a.Process.Args) == 0 {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: "exec in a container needs a process with a command"}
	}
	root, err := s.containerRoot(ctx, a.Container)
	if err != nil {
		return nil, err
	}
	// The command is looked up in the container's root, as for its init:
	// a missing one is told apart from a failing one.
	proc := *a.Process
	if err := inroot.Resolve(&specs.Spec{Process: &proc, Root: &specs.Root{Path: root}}, inroot.Dir(root)); err != nil {
		code := agent.CodeInvalid
		if errors.Is(err, inroot.ErrCommandNotFound) {
			code = agent.CodeExecNotFound
		}
		return nil, &agent.Error{Code: code, Message: err.Error()}
	}
	p, err := s.Runtime.Exec(ctx, a.Container, proc, ociruntime.Stdio{
		Stdin: stdin, Stdout: streamWriter{s, id, "stdout"}, Stderr: streamWriter{s, id, "stderr"}})
	if err != nil {
		return nil, err
	}
	if rc != nil {
		rc.p = p
		close(rc.started)
	}
	s.send(&agent.Message{ID: id, Stream: agent.StreamRunning})
	code, err := p.Wait()
	return agent.ExecResult{ExitCode: code}, err
}

// containerCgroup is the directory of a running container's cgroup: its
// init's, which the runtime placed wherever the spec's cgroupsPath said.
func (s *Server) containerCgroup(ctx context.Context, name string) (string, error) {
	pid, err := s.containerInit(ctx, name)
	if err != nil {
		return "", err
	}
	return initCgroup(name, pid)
}

// initCgroup is the cgroup directory of container name's init, pid.
func initCgroup(name string, pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup of container %s: %w", name, err)
	}
	dir, err := cgroupDir(b)
	if err != nil {
		return "", fmt.Errorf("cgroup of container %s: %w", name, err)
	}
	return dir, nil
}

// cgroupDir reads a /proc/PID/cgroup: the v2 entry ("0::/path").
func cgroupDir(procCgroup []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(procCgroup))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(cgroupRoot, filepath.Clean("/"+p)), nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}

func (s *Server) containerPids(ctx context.Context, name string) (any, error) {
	pid, err := s.containerInit(ctx, name)
	if err != nil {
		return nil, err
	}
	dir, err := initCgroup(name, pid)
	if err != nil {
		return nil, err
	}
	r := agent.PidsResult{Init: pid}
	// The container's processes may sit in child cgroups (a runtime's
	// "domain" leaves, or the container's own).
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				r.Pids = append(r.Pids, pid)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("processes of container %s: %w", name, err)
	}
	return r, nil
}

// statsFiles are the cgroup v2 files a container's statistics are read
// from.
var statsFiles = []string{
	"memory.current", "memory.max", "memory.stat", "memory.events", "memory.peak",
	"memory.swap.current", "memory.swap.max",
	"cpu.stat", "pids.current", "pids.max", "io.stat",
}

// maxStatsFile bounds what is read of one file (io.stat grows with the
// devices).
const maxStatsFile = 64 << 10

func (s *Server) containerStats(ctx context.Context, name string) (any, error) {
	dir, err := s.containerCgroup(ctx, name)
	if err != nil {
		return nil, err
	}
	r := agent.CgroupStatsResult{Files: map[string]string{}}
	for _, f := range statsFiles {
		b, err := readBounded(filepath.Join(dir, f), maxStatsFile)
		if errors.Is(err, os.ErrNotExist) {
			continue // a controller the cgroup does not have
		}
		if err != nil {
			return nil, fmt.Errorf("statistics of container %s: %w", name, err)
		}
		r.Files[f] = string(b)
	}
	return r, nil
}

func readBounded(name string, n int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

func (s *Server) updateContainer(ctx context.Context, a agent.UpdateArgs) error {
	if a.Resources == nil {
		return &agent.Error{Code: agent.CodeInvalid, Message: "update needs resources"}
	}
	if _, err := s.containerRoot(ctx, a.Container); err != nil {
		return err
	}
	return s.Runtime.Update(ctx, a.Container, a.Resources)
}

func (s *Server) pauseContainer(ctx context.Context, name string, pause bool) error {
	if _, err := s.containerRoot(ctx, name); err != nil {
		return err
	}
	if pause {
		return s.Runtime.Pause(ctx, name)
	}
	return s.Runtime.Resume(ctx, name)
}
