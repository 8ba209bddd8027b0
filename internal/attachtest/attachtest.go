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
	tries         int           // Remove calls, failed ones included
	broken        func(K) error // set by BreakRemove
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
	m.mu.Lock()
	m.tries++
	broken := m.broken
	m.mu.Unlock()
	if broken != nil {
		if err := broken(k); err != nil {
			return err
		}
	}
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

// RemoveTries reports how many removals were attempted, failed ones
// included.
func (m *Table[K, V]) RemoveTries() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tries
}

// BreakRemove makes the removal of every key matching match fail with err
// until fix is called. Unlike RemoveHook it may be set while the
// controller runs.
func (m *Table[K, V]) BreakRemove(match func(K) bool, err error) (fix func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.broken = func(k K) error {
		if match(k) {
			return err
		}
		return nil
	}
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.broken = nil
	}
}

// Any reports whether some entry satisfies match.
func (m *Table[K, V]) Any(match func(K, V) bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.items {
		if match(k, v) {
			return true
		}
	}
	return false
}
