package guest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/layervisor/layervisor/pkg/hostrun"
)

// helperPool keeps one container helper (hostrun.Helper) started ahead of
// need: a container's command then skips the helper's start-up, the
// larger part of an exec in a TCG guest. The helper started at boot is in
// a UVM template too, so clones have one from the start; it holds no
// secret (its Go runtime's random state is the same in every clone, and
// the command it execs gets fresh randomness from the kernel, which the
// agent reseeds after a restore).
type helperPool struct {
	mu       sync.Mutex
	spare    *hostrun.Helper
	starting bool
	// first is closed once the first spare is ready (or failed).
	firstOnce sync.Once
	first     chan struct{}
}

func (p *helperPool) firstDone() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.first == nil {
		p.first = make(chan struct{})
	}
	return p.first
}

// waitFirst waits up to d for the first spare to be ready. The agent
// answers its first hello only then, so that a template, saved right after
// that hello, holds a helper at rest: one still starting would go on
// touching memory in every clone (~16 MiB of host RSS each).
func (p *helperPool) waitFirst(d time.Duration) {
	select {
	case <-p.firstDone():
	case <-time.After(d):
	}
}

// refill starts a spare helper unless there is one.
func (p *helperPool) refill() {
	p.mu.Lock()
	if p.spare != nil || p.starting {
		p.mu.Unlock()
		return
	}
	p.starting = true
	p.mu.Unlock()
	h, err := hostrun.StartHelper()
	if err == nil {
		if err = h.Ready(); err != nil {
			h.Close()
		}
	}
	first := p.firstDone()
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.firstOnce.Do(func() { close(first) })
	p.starting = false
	if err != nil {
		slog.Warn("agent: start a spare container helper", "err", err)
		return
	}
	p.spare = h
}

// run runs o in the spare helper, or in a fresh one when there is none or
// the spare died, and starts the next spare once the command is done (not
// before: in a TCG guest it would compete with the command for the CPU).
func (p *helperPool) run(ctx context.Context, o hostrun.Options) (int, error) {
	defer func() { go p.refill() }()
	p.mu.Lock()
	h := p.spare
	p.spare = nil
	p.mu.Unlock()
	if h != nil {
		code, err := h.Run(ctx, o)
		if !errors.Is(err, hostrun.ErrHelperGone) {
			return code, err
		}
		slog.Warn("agent: spare container helper was gone; starting one", "err", err)
	}
	return hostrun.Run(ctx, o)
}
