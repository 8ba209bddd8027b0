package ociruntime

import (
	"fmt"
	"os"
	"syscall"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func newTerminalIO(size *specs.Box) (*terminalIO, error) {
	master, slavePath, err := console.NewPty()
	if err != nil {
		return nil, fmt.Errorf("pseudo-terminal: %w", err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("pseudo-terminal %s: %w", slavePath, err)
	}
	// A relay: no line discipline of its own (else output gets a second
	// CR per line, and input is echoed twice).
	if sc, err := console.ConsoleFromFile(slave); err == nil {
		sc.SetRaw()
	}
	if size != nil {
		master.Resize(console.WinSize{Height: uint16(size.Height), Width: uint16(size.Width)})
	}
	return &terminalIO{master: master, slave: slave}, nil
}

// sendWinch tells the runtime to pass its terminal's new size on.
func sendWinch(pid int) error { return syscall.Kill(pid, syscall.SIGWINCH) }
