//go:build unix

package qmp

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// writeWithFile writes b with f's descriptor attached.
func writeWithFile(conn net.Conn, b []byte, f *os.File) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("passing a file needs a unix socket")
	}
	_, _, err := uc.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
	return err
}
