//go:build !linux

// Package hostrun runs a command in a container root on a Linux host.
package hostrun

import (
	"context"
	"errors"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const ExitCommandNotFound = 127

type Options struct {
	Rootfs       string
	Args         []string
	Env          []string
	Cwd          string
	Stdin        io.Reader
	Stdout       io.Writer
	Stderr       io.Writer
	Hostname     string
	Capabilities *specs.LinuxCapabilities
	Mounts       []Mount
}

func Run(context.Context, Options) (int, error) {
	return 0, errors.New("hostrun: process isolation needs Linux")
}

func MaybeInit() {}

func FileStdin(r io.Reader) (io.Reader, func(), error) { return r, func() {}, nil }
