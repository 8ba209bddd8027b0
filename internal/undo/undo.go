// Package undo records the reverse of every completed step of a multi-step
// operation so that a failure can roll back exactly what was done.
//
//	var u undo.Stack
//	defer u.RunUnlessCommitted(ctx, &err)
//	... step 1 ...; u.Push("detach loop", func(ctx context.Context) error { ... })
//	... step 2 ...
//	u.Commit()
package undo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

type step struct {
	name string
	fn   func(context.Context) error
}

// Stack is a LIFO of undo steps. The zero value is ready to use and it is
// safe for concurrent Push.
type Stack struct {
	mu        sync.Mutex
	steps     []step
	committed bool
}

// Push registers the undo of a step that has just completed.
func (s *Stack) Push(name string, fn func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, step{name, fn})
}

// Commit marks the operation successful: the recorded undos will not run.
func (s *Stack) Commit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed = true
	s.steps = nil
}

// Run runs every recorded undo in reverse order, continuing past failures,
// and returns them joined. It empties the stack.
func (s *Stack) Run(ctx context.Context) error {
	s.mu.Lock()
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()
	// Undo must run even when the operation was cancelled.
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(ctx); err != nil {
			slog.Warn("undo step failed", "step", steps[i].name, "err", err)
			errs = append(errs, fmt.Errorf("undo %s: %w", steps[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// RunUnlessCommitted is meant for defer: when *errp is non-nil and Commit was
// not called, it rolls back and joins any undo failure into *errp.
func (s *Stack) RunUnlessCommitted(ctx context.Context, errp *error) {
	s.mu.Lock()
	committed := s.committed
	s.mu.Unlock()
	if committed || errp == nil || *errp == nil {
		return
	}
	if uerr := s.Run(ctx); uerr != nil {
		*errp = errors.Join(*errp, uerr)
	}
}

// Len reports how many undo steps are pending.
func (s *Stack) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.steps)
}
