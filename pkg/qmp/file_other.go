//go:build !unix

package qmp

import (
	"errors"
	"net"
	"os"
)

func writeWithFile(net.Conn, []byte, *os.File) error {
	return errors.New("passing a file to QEMU needs a unix socket")
}
