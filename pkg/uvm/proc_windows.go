package uvm

import (
	"errors"
	"os"
	"os/exec"
)

func detach(cmd *exec.Cmd, tied bool) {}

func startTied(cmd *exec.Cmd) error { return cmd.Start() }

func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

func procStart(pid int) (uint64, error) { return 0, errors.New("process start times need /proc") }

// dirLock does not lock on Windows, where UVMs do not run.
type dirLock struct{}

func tryLockDir(dir string) (*dirLock, bool, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, false, err
	}
	return &dirLock{}, true, nil
}

func (l *dirLock) release() {}
