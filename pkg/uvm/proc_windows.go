package uvm

import (
	"os"
	"os/exec"
)

func detach(cmd *exec.Cmd) {}

func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
