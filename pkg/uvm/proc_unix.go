//go:build !windows

package uvm

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/layervisor/layervisor/internal/flock"
)

// detach puts QEMU in its own session, so a terminal's Ctrl-C reaches the
// CLI (which tears the VM down in order) and not QEMU first. A tied QEMU
// also gets SIGKILL from the kernel when its owner dies (PR_SET_PDEATHSIG).
func detach(cmd *exec.Cmd, tied bool) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if tied {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
}

// The parent-death signal fires when the *thread* that forked the child
// exits, and Go ends the thread of a goroutine that exits while locked to
// it. So tied children are forked from one locked thread that lives as
// long as the process: the signal then means "the owner process died".
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startTied(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not exit
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawnReqs <- r
	return <-r.done
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// procStart is a process's start time in clock ticks since boot (field 22
// of /proc/<pid>/stat), which differs for a reused PID.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: count
	// fields after its last ')'. State is field 3, so field 22 is the 20th.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	if f[0] == "Z" {
		return 0, fmt.Errorf("process %d is a zombie", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// dirLock is an flock on a UVM's directory.
type dirLock struct{ l *flock.Lock }

func tryLockDir(dir string) (*dirLock, bool, error) {
	l, ok, err := flock.TryLockDir(dir)
	if !ok || err != nil {
		return nil, ok, err
	}
	return &dirLock{l}, true, nil
}

func (l *dirLock) release() {
	if l != nil {
		l.l.Release()
	}
}
