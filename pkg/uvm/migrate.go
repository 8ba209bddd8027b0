package uvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/qmp"
)

// Migration to and from a file without QEMU starting a process: QEMU 7.2
// has no file: migration URI, and exec: runs /bin/sh, which QEMU's seccomp
// filter with spawn=deny forbids (QEMU dies of SIGSYS). Instead QEMU
// connects to, or listens on, a unix socket in a private directory, and
// this process copies between the socket and the file.

// migrateToFile saves a stopped VM's migration stream into file (created,
// must not exist).
func migrateToFile(ctx context.Context, q *qmp.Client, file string) (err error) {
	dir, err := os.MkdirTemp("", "layervisor-migrate-")
	if err != nil {
		return fmt.Errorf("migrate to %s: %w", file, err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "out.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("migrate to %s: %w", file, err)
	}
	defer l.Close()
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("migrate to %s: %w", file, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("migrate to %s: %w", file, cerr)
		}
	}()
	copied := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			copied <- err
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		_, err = io.Copy(out, c)
		copied <- err
	}()
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		return fmt.Errorf("migrate to %s: %w", file, err)
	}
	if err := migrationDone(ctx, q); err != nil {
		return fmt.Errorf("migrate to %s: %w", file, err)
	}
	// QEMU closes the connection once the stream is complete.
	select {
	case err := <-copied:
		if err != nil {
			return fmt.Errorf("migrate to %s: %w", file, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("migrate to %s: %w", file, ctx.Err())
	}
}

// migrateFromFile loads the migration stream in file into a QEMU started
// with -incoming defer and waits until it is loaded.
func migrateFromFile(ctx context.Context, q *qmp.Client, file string) error {
	in, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("migrate from %s: %w", file, err)
	}
	defer in.Close()
	dir, err := os.MkdirTemp("", "layervisor-migrate-")
	if err != nil {
		return fmt.Errorf("migrate from %s: %w", file, err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "in.sock")
	// QEMU listens once the command has returned.
	if err := q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		return fmt.Errorf("migrate from %s: %w", file, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("migrate from %s: %w", file, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	_, cerr := io.Copy(c, in)
	stop()
	c.Close()
	// A stream QEMU refused shows in its migration status, which names
	// the cause better than our broken pipe.
	if err := migrationDone(ctx, q); err != nil {
		return fmt.Errorf("migrate from %s: %w", file, errors.Join(err, cerr))
	}
	if cerr != nil {
		return fmt.Errorf("migrate from %s: %w", file, cerr)
	}
	return nil
}
