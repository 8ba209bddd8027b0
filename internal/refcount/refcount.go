// Package refcount is the reference-counted core shared by the utility VM's
// attachment controllers (SCSI, VPMEM, shares): attachments looked up by key,
// counted, made and torn down by one caller at a time while the others wait
// for the outcome (internal/inflight), and released only once the teardown
// has succeeded.
//
// An attachment has a host part (a disk plugged, a daemon serving) and a
// guest part (its mount). Release of the last reference runs Unmount, then
// Remove. When a step fails the reference is kept and Release returns the
// error: the caller (or gc) calls Release again, which resumes at the step
// that failed — a disk the guest could not unmount is never hot-removed
// under it, and a disk already unmounted is not unmounted twice. Meanwhile
// Attach of the same key still gets a usable reference (it mounts the guest
// part again if it was already gone).
//
// Hooks without Remove keep the host part for good (QEMU cannot unplug
// pmem): at ref zero the guest part is unmounted and the entry stays, idle,
// until the next Attach of the key mounts it again.
package refcount

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/layervisor/layervisor/internal/inflight"
)

var (
	// ErrConflict means the key is attached with other options.
	ErrConflict = errors.New("already attached with a different configuration")
	// ErrAlreadyReleased means Release was called again after it succeeded.
	ErrAlreadyReleased = errors.New("already released")
)

// Hooks are a controller's own steps. The table calls at most one of them at
// a time per key, never under its lock.
type Hooks[K comparable, O comparable, V any] struct {
	// Attach makes a new attachment of k with opts, host and guest part;
	// on failure it leaves nothing (or keeps its own record of what it
	// could not undo).
	Attach func(ctx context.Context, k K, opts O) (V, error)
	// Mount mounts the guest part of an attachment whose guest part was
	// unmounted (a failed Remove, or an idle entry without Remove) and
	// returns its value, which may name a new guest path.
	Mount func(ctx context.Context, k K, v V) (V, error)
	// Unmount undoes the guest part. It runs again after a failure.
	Unmount func(ctx context.Context, k K, v V) error
	// Remove undoes the host part after a successful Unmount; nil means
	// the host part is kept (the entry stays, idle, at ref zero).
	Remove func(ctx context.Context, k K, v V) error
}

type opKind int

const (
	opAttach  opKind = iota // Attach or Mount: waiters get its error
	opRelease               // Release: waiters look again
)

type entry[O comparable, V any] struct {
	opts    O
	v       V
	refs    int
	mounted bool         // the guest part is there
	busy    bool         // a hook is running; op is its outcome
	kind    opKind       // what busy is doing
	op      *inflight.Op // the transition in flight (or the last one)
}

// Table holds the attachments of one controller. Safe for concurrent use.
type Table[K comparable, O comparable, V any] struct {
	hooks Hooks[K, O, V]
	mu    sync.Mutex
	byKey map[K]*entry[O, V]
}

// New returns an empty table running hooks.
func New[K comparable, O comparable, V any](hooks Hooks[K, O, V]) *Table[K, O, V] {
	return &Table[K, O, V]{hooks: hooks, byKey: map[K]*entry[O, V]{}}
}

// Ref is one reference to an attachment. Release it until it succeeds.
type Ref[K comparable, O comparable, V any] struct {
	t        *Table[K, O, V]
	k        K
	e        *entry[O, V]
	v        V    // the value when the reference was taken
	released bool // under t.mu
}

// Key is what the reference is attached by.
func (r *Ref[K, O, V]) Key() K { return r.k }

// Value is the controller's value for the attachment as it was when this
// reference was taken.
func (r *Ref[K, O, V]) Value() V { return r.v }

// Options are the options the attachment was made with.
func (r *Ref[K, O, V]) Options() O { return r.e.opts }

// begin marks e busy with a new op of kind. Called with t.mu held.
func (e *entry[O, V]) begin(kind opKind) *inflight.Op {
	e.busy, e.kind, e.op = true, kind, inflight.New()
	return e.op
}

// finish ends e's op. Called with t.mu held.
func (e *entry[O, V]) finish(err error) {
	e.busy = false
	e.op.Finish(err)
}

// Attach returns a new reference to k, attaching it first (or mounting its
// guest part again) when needed. Options different from those k is
// attached with are ErrConflict. Callers arriving while another caller
// attaches k get that attach's outcome; those arriving during a release
// wait for it and then look again.
func (t *Table[K, O, V]) Attach(ctx context.Context, k K, opts O) (*Ref[K, O, V], error) {
	t.mu.Lock()
	for {
		e := t.byKey[k]
		if e == nil {
			break
		}
		if e.busy {
			o, kind := e.op, e.kind
			t.mu.Unlock()
			if err := o.Wait(ctx); err != nil {
				return nil, err
			}
			if kind == opAttach && o.Err() != nil {
				// Every caller waiting on a failed attach gets its error.
				return nil, fmt.Errorf("concurrent attach failed: %w", o.Err())
			}
			t.mu.Lock()
			continue
		}
		if e.opts != opts {
			t.mu.Unlock()
			return nil, fmt.Errorf("%w (attached with %+v, asked %+v)", ErrConflict, e.opts, opts)
		}
		if e.mounted {
			e.refs++
			r := &Ref[K, O, V]{t: t, k: k, e: e, v: e.v}
			t.mu.Unlock()
			return r, nil
		}
		return t.remount(ctx, k, e) // unlocks
	}
	e := &entry[O, V]{opts: opts}
	e.begin(opAttach)
	t.byKey[k] = e
	t.mu.Unlock()

	v, err := t.hooks.Attach(ctx, k, opts)

	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		delete(t.byKey, k)
		e.finish(err)
		return nil, err
	}
	e.v, e.mounted, e.refs = v, true, 1
	e.finish(nil)
	return &Ref[K, O, V]{t: t, k: k, e: e, v: v}, nil
}

// remount mounts the guest part of e again. Called with t.mu held; unlocks.
// A failure leaves e as it was (unmounted, its refs unchanged).
func (t *Table[K, O, V]) remount(ctx context.Context, k K, e *entry[O, V]) (*Ref[K, O, V], error) {
	e.begin(opAttach)
	old := e.v
	t.mu.Unlock()

	v, err := t.hooks.Mount(ctx, k, old)

	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		e.finish(err)
		return nil, err
	}
	e.v, e.mounted = v, true
	e.refs++
	e.finish(nil)
	return &Ref[K, O, V]{t: t, k: k, e: e, v: v}, nil
}

// Release drops the reference. The last one unmounts the guest part, then
// removes the host part; if either fails the reference is kept and the
// error returned, and calling Release again resumes at the failed step.
// Release after a successful Release is ErrAlreadyReleased.
func (r *Ref[K, O, V]) Release(ctx context.Context) error {
	t, e := r.t, r.e
	t.mu.Lock()
	for e.busy {
		o := e.op
		t.mu.Unlock()
		if err := o.Wait(ctx); err != nil {
			return err
		}
		t.mu.Lock()
	}
	if r.released {
		t.mu.Unlock()
		return ErrAlreadyReleased
	}
	if e.refs > 1 {
		e.refs--
		r.released = true
		t.mu.Unlock()
		return nil
	}
	e.begin(opRelease)
	mounted, v := e.mounted, e.v
	t.mu.Unlock()

	if mounted {
		if err := t.hooks.Unmount(ctx, r.k, v); err != nil {
			t.mu.Lock()
			e.finish(err)
			t.mu.Unlock()
			return err
		}
		t.mu.Lock()
		e.mounted = false
		t.mu.Unlock()
	}
	if t.hooks.Remove == nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		e.refs = 0 // idle: the host part stays for the next Attach
		r.released = true
		e.finish(nil)
		return nil
	}
	err := t.hooks.Remove(ctx, r.k, v)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		e.refs = 0
		r.released = true
		delete(t.byKey, r.k)
	}
	e.finish(err)
	return err
}

// RefCount reports the references to k handed out and not yet released
// (0 when k is not attached or only idle).
func (t *Table[K, O, V]) RefCount(k K) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.byKey[k]; e != nil {
		return e.refs
	}
	return 0
}

// Len reports how many keys have an entry: attached, idle, or in
// transition.
func (t *Table[K, O, V]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}
