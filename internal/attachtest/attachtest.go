// Package attachtest is the attachment table that the fake hosts and fake
// guests in the tests of the utility VM's attachment controllers share: a
// host's disks by slot, a guest's mounts by path. It fails the test on a
// double add or a removal of something absent, which is how those tests
// catch a controller losing track of its state.
package attachtest

import (
	"sync"
	"testing"
)

// Table maps keys to what is attached there, and counts adds and removes.
// Safe for concurrent use; set the hooks before the controller runs.
type Table[K comparable, V any] struct {
	// AddHook, when set, runs first on each Add with the key; an error
	// fails the add. Tests use it to inject failures or block.
	AddHook func(K) error
	// RemoveHook is the same for Remove.
	RemoveHook func(K) error

	t             testing.TB
	what          string
	mu            sync.Mutex
	items         map[K]V
	adds, removes int
}

// New returns an empty table that reports misuse to t, naming entries what
// ("guest mount", "SCSI disk").
func New[K comparable, V any](t testing.TB, what string) *Table[K, V] {
	return &Table[K, V]{t: t, what: what, items: map[K]V{}}
}

// Add runs AddHook, then records v at k.
func (m *Table[K, V]) Add(k K, v V) error {
	if m.AddHook != nil {
		if err := m.AddHook(k); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.items[k]; ok {
		m.t.Errorf("%s %v added twice", m.what, k)
	}
	m.items[k] = v
	m.adds++
	return nil
}

// Remove runs RemoveHook, then forgets k.
func (m *Table[K, V]) Remove(k K) error {
	if m.RemoveHook != nil {
		if err := m.RemoveHook(k); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.items[k]; !ok {
		m.t.Errorf("removal of %s %v which is not there", m.what, k)
	}
	delete(m.items, k)
	m.removes++
	return nil
}

// Get returns what is attached at k.
func (m *Table[K, V]) Get(k K) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.items[k]
	return v, ok
}

// Count reports how many entries are attached.
func (m *Table[K, V]) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

// Counts reports the entries attached now and the adds and removes so far.
func (m *Table[K, V]) Counts() (attached, adds, removes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items), m.adds, m.removes
}
