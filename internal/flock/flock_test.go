//go:build linux

package flock

import (
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestExcludesGoroutines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := Acquire(p)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside != 1 {
				t.Errorf("%d holders at once", inside)
			}
			mu.Unlock()
			mu.Lock()
			inside--
			mu.Unlock()
			l.Release()
		}()
	}
	wg.Wait()
	l, ok, err := TryAcquire(p)
	if err != nil || !ok {
		t.Fatalf("TryAcquire on free lock: %v %v", ok, err)
	}
	if _, ok2, _ := TryAcquire(p); ok2 {
		t.Fatal("TryAcquire succeeded on held lock")
	}
	l.Release()
}

// TestRemoveWhileContended removes the lock file under waiters again and
// again: exclusion must hold across removals (a waiter that locked the
// unlinked file must not think it holds the lock).
func TestRemoveWhileContended(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				l, err := Acquire(p)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inside++
				n := inside
				mu.Unlock()
				time.Sleep(10 * time.Microsecond) // let others try to get in
				mu.Lock()
				inside--
				mu.Unlock()
				if n != 1 {
					t.Errorf("%d holders at once", n)
				}
				if (i+j)%3 == 0 {
					err = l.Remove()
				} else {
					err = l.Release()
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
}
