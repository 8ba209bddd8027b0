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

	"github.com/layervisor/layervisor/internal/logctx"
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
	slog.SetDefault(newLogger(logw, level, o.namespace, o.id))
	ctx = logctx.With(ctx, slog.String("namespace", o.namespace), slog.String("sandbox", o.id))

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
	slog.DebugContext(ctx, "shim serving", "socket", o.socket, "pid", os.Getpid())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGPIPE) // a client that went away is not our end
	select {
	case <-ctx.Done():
	case s := <-sigs:
		slog.InfoContext(ctx, "shim stopping on signal", "signal", s)
	case err := <-served:
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			slog.ErrorContext(ctx, "ttrpc server", "err", err)
		}
	}
	// Let the Shutdown reply go out before the connection closes.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	srv.Shutdown(sctx)
	scancel()
	svc.teardown(context.WithoutCancel(ctx))
	srv.Close()
	return nil
}

// newLogger is the daemon's logger, writing to w: what all its records
// share (the shim's namespace and sandbox, the group its socket and VM are
// for) on every record, code in other packages logging without a context
// included, and the attributes of a request's context (package logctx) on
// those logged with it.
func newLogger(w io.Writer, level slog.Level, ns, sandbox string) *slog.Logger {
	h := logctx.NewHandler(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	return slog.New(h).With("shim", BinaryName, "namespace", ns, "sandbox", sandbox)
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
