//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/layervisor/layervisor/internal/logctx"
	"github.com/layervisor/layervisor/pkg/snapshotter"
)

func newServeCmd(o *options) *cobra.Command {
	var socket, content string
	var noScratch bool
	var pool int
	cmd := &cobra.Command{
		Use:   "serve --socket PATH",
		Short: "Serve containerd's Snapshots and Diff services over the store (proxy plugins)",
		Long: `serve makes the store a containerd snapshotter and differ: one unix socket
carries containerd's Snapshots service (proxy plugin type "snapshot") and Diff
service (type "diff", containerd 1.7 and later). Committed snapshots are layer
images keyed by chain ID, shared with 'layervisor image import' and between
containerd namespaces once the chain ID is verified from the layer's bytes (the
differ, image import); a directory a client committed under a chain ID stays
private to its snapshot (containerd 1.6 unpacks that way); a container's
writable layer is a scratch disk cloned from the store's template (--scratch-pool
of them kept cloned and mounted ahead, so preparing one costs about what an
overlayfs directory does; in a burst longer than the pool, the rest clone their
own); the differ converts layer blobs straight into layer images, reading them
from containerd's content directory (--containerd-content).

On start it reconciles what a crash left (as gc does). The socket is created
with mode 0600 from its first moment; anything at --socket that is not a stale
socket is left alone and makes serve fail. Stop it with SIGTERM.
--log-level debug logs each call containerd makes, with its time.`,
		Example: `  layervisor serve --socket /run/layervisor/snapshotter.sock`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if pool < 0 {
				return fmt.Errorf("--scratch-pool %d: want 0 or more", pool)
			}
			return serve(cmd.Context(), o, socket, content, noScratch, pool)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "/run/layervisor/snapshotter.sock", "unix socket to serve on")
	cmd.Flags().StringVar(&content, "containerd-content", "/var/lib/containerd/io.containerd.content.v1.content",
		"containerd's content store directory, where the differ reads layer blobs")
	cmd.Flags().BoolVar(&noScratch, "no-scratch", false,
		"containers' writable layers as plain directories, not scratch disks (no size bound)")
	cmd.Flags().IntVar(&pool, "scratch-pool", snapshotter.DefaultScratchPool,
		"scratch disks kept cloned and mounted ahead of containers' Prepare (0: make each when asked)")
	return cmd
}

func serve(ctx context.Context, o *options, socket, content string, noScratch bool, pool int) error {
	// A wrong --socket fails before the store is reconciled.
	if err := clearSocketPath(socket); err != nil {
		return err
	}
	st, err := o.openStore()
	if err != nil {
		return err
	}
	opts := []snapshotter.Option{snapshotter.WithScratchPool(pool)}
	if noScratch {
		opts = append(opts, snapshotter.WithoutScratch())
	}
	sn, err := snapshotter.New(ctx, st, opts...)
	if err != nil {
		return err
	}
	defer func() {
		if err := sn.Close(); err != nil {
			slog.ErrorContext(ctx, "close snapshotter", "err", err)
		}
	}()
	l, removeSocket, err := listenUnix(socket, socketMode)
	if err != nil {
		return err
	}
	rpc := newRPCServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	d := snapshotter.NewDiffer(sn, content)
	diffapi.RegisterDiffServer(rpc, diffservice.FromApplierAndComparer(d, d))
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			rpc.GracefulStop()
		case <-stopped:
		}
	}()
	slog.InfoContext(ctx, "serving", "socket", socket, "root", st.Root())
	if !o.quiet {
		fmt.Fprintf(os.Stderr, "layervisor: serving containerd snapshotter and differ on %s\n", socket)
	}
	err = rpc.Serve(l)
	close(stopped)
	removeSocket()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve %s: %w", socket, err)
	}
	return nil
}

// socketMode is the socket's mode: containerd connects as root.
const socketMode = 0o600

// newRPCServer is the gRPC server serve uses: a panic in one call (a bug
// reached by a client's input) answers that call with Internal instead of
// taking the daemon, and every snapshot mount with it, down.
func newRPCServer() *grpc.Server {
	return grpc.NewServer(
		grpc.ChainUnaryInterceptor(recoverUnary, logCall),
		grpc.ChainStreamInterceptor(recoverStream),
	)
}

// recoverUnary turns a panic in a unary handler into codes.Internal. It
// is the first interceptor: the call's context gets the caller's
// containerd namespace for the log here.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	ctx = callContext(ctx)
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, panicked(ctx, info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

// recoverStream turns a panic in a streaming handler into codes.Internal.
func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicked(callContext(ss.Context()), info.FullMethod, r)
		}
	}()
	return handler(srv, ss)
}

// callContext is ctx with the caller's containerd namespace, when the call
// carries one, for the log (package logctx).
func callContext(ctx context.Context) context.Context {
	if ns, ok := namespaces.Namespace(ctx); ok {
		return logctx.With(ctx, slog.String("namespace", ns))
	}
	return ctx
}

func panicked(ctx context.Context, method string, r any) error {
	slog.ErrorContext(ctx, "panic serving a call; the call fails, the daemon goes on", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "layervisor: internal error in %s (logged)", method)
}

// logCall logs each call containerd makes, with its time, at debug level.
func logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	t0 := time.Now()
	resp, err := handler(ctx, req)
	slog.DebugContext(ctx, "call", "method", info.FullMethod, "took", time.Since(t0), "err", err)
	return resp, err
}

// listenUnix listens on socket, which has mode from its first moment: it
// is bound in a new private (0700) directory beside socket, given its mode
// there, and only then renamed into place, so nobody can connect while it
// has the umask's permissions. (Setting the umask around the bind would
// not do: the umask is the process's, and the snapshotter is already
// creating files in other goroutines.) The rename never replaces anything
// (RENAME_NOREPLACE). A stale socket a killed daemon left is removed first;
// a socket another daemon answers on, or anything at socket that is not a
// socket, is an error naming it. remove deletes the socket at exit if it
// is still this one.
func listenUnix(socket string, mode os.FileMode) (l net.Listener, remove func(), err error) {
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if err := clearSocketPath(socket); err != nil {
		return nil, nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".layervisor-sock-")
	if err != nil {
		return nil, nil, fmt.Errorf("socket %s: %w", socket, err)
	}
	defer os.RemoveAll(tmp)
	d, err := os.Open(tmp)
	if err != nil {
		return nil, nil, fmt.Errorf("socket %s: %w", socket, err)
	}
	defer d.Close()
	// Bound through the directory's descriptor: the temp path may be too
	// long for a socket address (108 bytes) where socket itself is not.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/s", d.Fd()), Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	ul.SetUnlinkOnClose(false) // its bound name is gone after the rename
	bound := filepath.Join(tmp, "s")
	if err := os.Chmod(bound, mode); err != nil {
		ul.Close()
		return nil, nil, fmt.Errorf("socket %s: %w", socket, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, bound, unix.AT_FDCWD, socket, unix.RENAME_NOREPLACE); err != nil {
		ul.Close()
		return nil, nil, fmt.Errorf("socket %s: put in place: %w", socket, err)
	}
	// Held until remove: while it is open, the socket's inode cannot be
	// freed and its number reused by a socket another daemon put there.
	pfd, err := unix.Open(socket, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		ul.Close()
		return nil, nil, fmt.Errorf("socket %s: %w", socket, err)
	}
	remove = func() {
		defer unix.Close(pfd)
		var mine, now unix.Stat_t
		if unix.Fstat(pfd, &mine) == nil && unix.Lstat(socket, &now) == nil && mine.Dev == now.Dev && mine.Ino == now.Ino {
			os.Remove(socket)
		}
	}
	return ul, remove, nil
}

// clearSocketPath makes sure nothing is at socket: a stale socket (nobody
// answers on it) is removed; a live one, or anything that is not a socket,
// is an error naming it, and is left alone.
func clearSocketPath(socket string) error {
	fi, err := os.Lstat(socket)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", socket, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket %s: a %s is there, not a socket: refusing to replace it (remove it, or choose another --socket)", socket, fileKind(fi.Mode()))
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s: another daemon is serving on it", socket)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", socket, err)
	}
	return nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	default:
		return "file of mode " + m.Type().String()
	}
}
