// Package mounttest is the guest mount table that the fake guests in the
// tests of the utility VM's attachment controllers share. It fails the test
// on a double mount or an unmount of a path that is not mounted, which is
// how those tests catch a controller losing track of its state.
package mounttest

import (
	"context"
	"sync"
	"testing"
)

// Table maps guest paths to what is mounted there. Safe for concurrent use;
// set the hooks before the controller runs.
type Table[V any] struct {
	// MountHook, when set, runs first on each Mount with the guest path; an
	// error fails the mount. Tests use it to inject failures or block.
	MountHook func(guestPath string) error
	// UnmountHook is the same for Unmount.
	UnmountHook func(guestPath string) error

	t      testing.TB
	mu     sync.Mutex
	mounts map[string]V
}

// New returns an empty table that reports misuse to t.
func New[V any](t testing.TB) *Table[V] {
	return &Table[V]{t: t, mounts: map[string]V{}}
}

// Mount runs MountHook, then records v at guestPath.
func (m *Table[V]) Mount(guestPath string, v V) error {
	if m.MountHook != nil {
		if err := m.MountHook(guestPath); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mounts[guestPath]; ok {
		m.t.Errorf("guest path %s mounted twice", guestPath)
	}
	m.mounts[guestPath] = v
	return nil
}

// Unmount runs UnmountHook, then forgets guestPath. It has the signature of
// the controllers' Guest.Unmount so that a fake guest can embed the Table.
func (m *Table[V]) Unmount(_ context.Context, guestPath string) error {
	if m.UnmountHook != nil {
		if err := m.UnmountHook(guestPath); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mounts[guestPath]; !ok {
		m.t.Errorf("unmount of %s which is not mounted", guestPath)
	}
	delete(m.mounts, guestPath)
	return nil
}

// Get returns what is mounted at guestPath.
func (m *Table[V]) Get(guestPath string) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.mounts[guestPath]
	return v, ok
}

// Count reports how many paths are mounted.
func (m *Table[V]) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mounts)
}
