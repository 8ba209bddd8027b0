package procrun

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/containerd/console"
)

// Process is a started container: on the host (*ociruntime.Process) or in
// a utility VM (*agent.Container, from vmrun).
type Process interface {
	Signal(ctx context.Context, sig syscall.Signal) error
	Resize(ws console.WinSize) error
	Done() <-chan struct{}
	Wait() (int, error)
}

// killGrace is how long a killed container has to be reported gone
// before the run gives up on it (teardown then takes it down: the
// utility VM's QEMU is killed).
const killGrace = 5 * time.Second

// Supervise supervises p as a foreground command until it exits and
// returns its exit status. It forwards the signals a user sends a
// foreground command (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2)
// to the container's init and, after SIGINT or SIGTERM, kills it when it
// has not exited stopTimeout later. With a terminal tty (the caller's,
// nil for none), tty is in raw mode meanwhile and the container's
// terminal follows its size.
func Supervise(ctx context.Context, p Process, tty console.Console, stopTimeout time.Duration) (int, error) {
	if tty != nil {
		if err := tty.SetRaw(); err == nil {
			defer tty.Reset()
		}
		if ws, err := tty.Size(); err == nil {
			p.Resize(ws)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if ws, err := tty.Size(); err == nil {
					p.Resize(ws)
				}
			}
		}()
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	return supervise(ctx, p, sigs, stopTimeout)
}

// supervise forwards sigs to the container's init and, after SIGINT or
// SIGTERM, kills it when it has not exited stopTimeout later. Signals are
// sent from goroutines: a runtime or guest that does not answer delays
// nothing here.
func supervise(ctx context.Context, p Process, sigs <-chan os.Signal, stopTimeout time.Duration) (int, error) {
	signalCtx := context.WithoutCancel(ctx)
	send := func(s syscall.Signal) {
		go func() {
			if err := p.Signal(signalCtx, s); err != nil {
				slog.Warn("signal the container", "signal", s, "err", err)
			}
		}()
	}
	var kill, abandon <-chan time.Time
	for {
		select {
		case <-p.Done():
			return p.Wait()
		case <-abandon:
			return 0, fmt.Errorf("the container did not exit %v after SIGKILL: giving up on it", killGrace)
		case sig := <-sigs:
			s := sig.(syscall.Signal)
			send(s)
			if (s == syscall.SIGINT || s == syscall.SIGTERM) && kill == nil && abandon == nil {
				kill = time.After(stopTimeout)
			}
		case <-kill:
			slog.Warn("the container did not exit in time: killing it", "stop-timeout", stopTimeout)
			send(syscall.SIGKILL)
			kill, abandon = nil, time.After(killGrace)
		}
	}
}
