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
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/layervisor/layervisor/pkg/snapshotter"
)

func init() {
	var socket, content string
	var noScratch bool
	var pool int
	cmd := &cobra.Command{
		Use:   "serve --socket PATH",
		Short: "Serve containerd's Snapshots and Diff services over the store (proxy plugins)",
		Long: `serve makes the store a containerd snapshotter and differ: one unix socket
carries containerd's Snapshots service (proxy plugin type "snapshot") and Diff
service (type "diff", containerd 1.7 and later). Committed snapshots are layer
images keyed by chain ID, shared with 'layervisor image import'; a container's
writable layer is a scratch disk cloned from the store's template (--scratch-pool
of them kept cloned and mounted ahead, so preparing one costs about what an
overlayfs directory does; in a burst longer than the pool, the rest clone their
own); the differ converts layer blobs straight into layer images, reading them
from containerd's content directory (--containerd-content).

On start it reconciles what a crash left (as gc does). Stop it with SIGTERM.
--log-level debug logs each call containerd makes, with its time.`,
		Example: `  layervisor serve --socket /run/layervisor/snapshotter.sock`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if pool < 0 {
				return fmt.Errorf("--scratch-pool %d: want 0 or more", pool)
			}
			return serve(cmd.Context(), socket, content, noScratch, pool)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "/run/layervisor/snapshotter.sock", "unix socket to serve on")
	cmd.Flags().StringVar(&content, "containerd-content", "/var/lib/containerd/io.containerd.content.v1.content",
		"containerd's content store directory, where the differ reads layer blobs")
	cmd.Flags().BoolVar(&noScratch, "no-scratch", false,
		"containers' writable layers as plain directories, not scratch disks (no size bound)")
	cmd.Flags().IntVar(&pool, "scratch-pool", snapshotter.DefaultScratchPool,
		"scratch disks kept cloned and mounted ahead of containers' Prepare (0: make each when asked)")
	rootCmd.AddCommand(cmd)
}

func serve(ctx context.Context, socket, content string, noScratch bool, pool int) error {
	st, err := openStore()
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
			slog.Error("close snapshotter", "err", err)
		}
	}()
	l, err := listenUnix(socket)
	if err != nil {
		return err
	}
	rpc := grpc.NewServer(grpc.UnaryInterceptor(logCall))
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
	slog.Info("serving", "socket", socket, "root", st.Root())
	if !g.quiet {
		fmt.Fprintf(os.Stderr, "layervisor: serving containerd snapshotter and differ on %s\n", socket)
	}
	err = rpc.Serve(l)
	close(stopped)
	os.Remove(socket)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve %s: %w", socket, err)
	}
	return nil
}

// logCall logs each call containerd makes, with its time, at debug level.
func logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	t0 := time.Now()
	resp, err := handler(ctx, req)
	slog.Debug("call", "method", info.FullMethod, "took", time.Since(t0), "err", err)
	return resp, err
}

// listenUnix listens on socket, replacing a stale socket file a killed
// daemon left, but never one another daemon still answers on.
func listenUnix(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if _, err := os.Lstat(socket); err == nil {
		if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another daemon is serving on it", socket)
		}
		if err := os.Remove(socket); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", socket, err)
		}
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
