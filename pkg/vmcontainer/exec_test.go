package vmcontainer_test

import (
	"os/exec"
	"syscall"
)

func execCmd(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

func syscallKill(pid int) { syscall.Kill(pid, syscall.SIGKILL) }
