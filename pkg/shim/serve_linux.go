package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"

	"github.com/layervisor/layervisor/pkg/uvm"
)

// serveAction is the shim daemon: it serves the task service on the
// listener start passed (fd 3) until Shutdown or SIGTERM, then tears the
// tasks and their UVM down and exits.
func serveAction(ctx context.Context, o options, vm uvm.Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logw := openLog(ctx)
	defer logw.Close()
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})).With("shim", BinaryName, "id", o.id, "namespace", o.namespace))

	lf := os.NewFile(3, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("listener from start: %w", err)
	}
	defer func() {
		l.Close()
		if o.socket != "" {
			os.Remove(o.socket)
		}
	}()

	pub := newPublisher(os.Getenv("TTRPC_ADDRESS"), o.namespace)
	defer pub.close()
	svc := newService(ctx, o.namespace, o.id, storeRoot(), pub, cancel)
	svc.UVMConfig = vm
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	taskv2.RegisterTTRPCTaskService(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	slog.Debug("shim serving", "socket", o.socket, "pid", os.Getpid())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGPIPE) // a client that went away is not our end
	select {
	case <-ctx.Done():
	case s := <-sigs:
		slog.Info("shim stopping on signal", "signal", s)
	case err := <-served:
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			slog.Error("ttrpc server", "err", err)
		}
	}
	// Let the Shutdown reply go out before the connection closes.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	srv.Shutdown(sctx)
	scancel()
	svc.teardown(context.Background())
	srv.Close()
	return nil
}

// openLog opens the bundle's "log" FIFO, whose reader containerd copies
// into its own log; io.Discard-like when there is none.
func openLog(ctx context.Context) io.WriteCloser {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	f, err := fifo.OpenFifo(octx, "log", syscall.O_WRONLY, 0o700)
	if err != nil {
		return nopCloser{io.Discard}
	}
	return f
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
