// Package inflight lets callers wait for a state transition another
// goroutine is carrying out (an attach or a detach) and learn how it ended,
// instead of racing it. Callers keep their own locking around their state.
package inflight

import "context"

// Op is one in-flight transition: its owner calls Finish once, any number
// of others Wait on it.
type Op struct {
	done chan struct{}
	err  error
}

// New returns an unfinished Op.
func New() *Op { return &Op{done: make(chan struct{})} }

// Finish records how the transition ended and wakes every waiter. Call it
// exactly once (under the caller's lock is fine). Closing done publishes
// err, so waiters read it without a lock.
func (o *Op) Finish(err error) {
	o.err = err
	close(o.done)
}

// Wait blocks until Finish, then returns nil, or until ctx ends, then
// returns ctx.Err().
func (o *Op) Wait(ctx context.Context) error {
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Err is the error given to Finish; it is meaningful only after Wait
// returned nil.
func (o *Op) Err() error { return o.err }
