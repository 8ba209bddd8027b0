// Package pciports hands out the PCIe root ports a utility VM creates at
// boot ("rp0", "rp1", …) to the controllers that hot-plug devices onto them
// (VPMEM and shares). One allocator is shared by all controllers of a VM so
// that two of them never plug into the same port.
package pciports

import (
	"errors"
	"fmt"
	"sync"
)

// ErrNoFreePort is returned (wrapped) when every root port is in use.
var ErrNoFreePort = errors.New("no free PCIe root port")

// Allocator is a concurrency-safe set of root ports, lowest free first.
type Allocator struct {
	mu    sync.Mutex
	inUse []bool
}

// New returns an allocator for ports rp0 … rp{n-1}.
func New(n int) *Allocator {
	if n < 0 {
		n = 0
	}
	return &Allocator{inUse: make([]bool, n)}
}

// Name is the QEMU id of root port i.
func Name(i int) string { return fmt.Sprintf("rp%d", i) }

// Allocate reserves the lowest free port and returns its index.
func (a *Allocator) Allocate() (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, used := range a.inUse {
		if !used {
			a.inUse[i] = true
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w (all %d in use)", ErrNoFreePort, len(a.inUse))
}

// Free returns port i to the pool. Freeing a port that is not allocated is
// an error (it would mean two owners).
func (a *Allocator) Free(i int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i < 0 || i >= len(a.inUse) || !a.inUse[i] {
		return fmt.Errorf("root port %d is not allocated", i)
	}
	a.inUse[i] = false
	return nil
}

// InUse reports how many ports are allocated.
func (a *Allocator) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, u := range a.inUse {
		if u {
			n++
		}
	}
	return n
}

// Len is the number of ports.
func (a *Allocator) Len() int { return len(a.inUse) }
