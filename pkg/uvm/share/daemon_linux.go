package share

import (
	"os/exec"
	"syscall"
)

var terminateSignal = syscall.SIGTERM

// setDaemonAttrs ties virtiofsd to us: it is killed if we die, and it is
// in its own process group so a terminal's Ctrl-C does not reach it first.
func setDaemonAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
