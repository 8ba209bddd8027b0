//go:build !windows

package uvm

import (
	"os/exec"
	"syscall"
)

// detach puts QEMU in its own session: the VM outlives the CLI process
// that started it.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
