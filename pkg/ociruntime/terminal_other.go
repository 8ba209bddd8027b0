//go:build !linux

package ociruntime

import (
	"errors"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var errNoTerminal = errors.New("container terminals need Linux")

func newTerminalIO(*specs.Box) (*terminalIO, error) { return nil, errNoTerminal }

func sendWinch(int) error { return errNoTerminal }
