package procrun

import (
	"context"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// fakeProcess is a container that records the signals it gets and exits
// with 128+N on the ones in exitOn.
type fakeProcess struct {
	mu     sync.Mutex
	got    []syscall.Signal
	exitOn []syscall.Signal
	done   chan struct{}
	status int
}

func newFake(exitOn ...syscall.Signal) *fakeProcess {
	return &fakeProcess{exitOn: exitOn, done: make(chan struct{})}
}

func (f *fakeProcess) Signal(_ context.Context, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, sig)
	if slices.Contains(f.exitOn, sig) && f.status == 0 {
		f.status = 128 + int(sig)
		close(f.done)
	}
	return nil
}

func (f *fakeProcess) signals() []syscall.Signal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func (f *fakeProcess) Resize(console.WinSize) error { return nil }
func (f *fakeProcess) Done() <-chan struct{}        { return f.done }
func (f *fakeProcess) Wait() (int, error)           { return f.status, nil }

func superviseAsync(p Process, sigs <-chan os.Signal, stop time.Duration) <-chan int {
	res := make(chan int, 1)
	go func() {
		code, _ := supervise(context.Background(), p, sigs, stop)
		res <- code
	}()
	return res
}

func waitCode(t *testing.T, res <-chan int) int {
	t.Helper()
	select {
	case code := <-res:
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("supervise did not return")
		return 0
	}
}

// Signals reach the container; one it exits on ends the supervision with
// its status, before the stop timeout.
func TestSuperviseForwardsSignals(t *testing.T) {
	p := newFake(syscall.SIGTERM)
	sigs := make(chan os.Signal, 2)
	sigs <- syscall.SIGUSR1
	res := superviseAsync(p, sigs, time.Hour)
	for !slices.Contains(p.signals(), syscall.SIGUSR1) {
		time.Sleep(time.Millisecond)
	}
	sigs <- syscall.SIGTERM
	if code := waitCode(t, res); code != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit %d, want %d", code, 128+int(syscall.SIGTERM))
	}
	if got := p.signals(); slices.Contains(got, syscall.SIGKILL) {
		t.Fatalf("signals %v: killed a container that exited in time", got)
	}
}

// A container that ignores SIGINT is killed stopTimeout later.
func TestSuperviseKillsAfterStopTimeout(t *testing.T) {
	p := newFake(syscall.SIGKILL)
	sigs := make(chan os.Signal, 1)
	start := time.Now()
	sigs <- syscall.SIGINT
	const stop = 200 * time.Millisecond
	if code := waitCode(t, superviseAsync(p, sigs, stop)); code != 137 {
		t.Fatalf("exit %d, want 137", code)
	}
	if took := time.Since(start); took < stop {
		t.Fatalf("killed after %v, before the stop timeout %v", took, stop)
	}
	if got := p.signals(); !slices.Equal(got, []syscall.Signal{syscall.SIGINT, syscall.SIGKILL}) {
		t.Fatalf("signals %v, want [interrupt killed]", got)
	}
}
