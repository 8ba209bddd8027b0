//go:build !linux

package share

import (
	"os"
	"os/exec"
)

var terminateSignal = os.Kill

func setDaemonAttrs(cmd *exec.Cmd) {}
