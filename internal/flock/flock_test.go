//go:build linux

package flock

import (
	"os"
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

// A directory lock excludes a second one until released, and names (which
// TryLockDir checks after locking) tells whether the path still names the
// locked directory.
func TestTryLockDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "uvm")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, ok, err := TryLockDir(dir)
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, ok, err := TryLockDir(dir); err != nil || ok {
		t.Fatalf("second lock while held: ok=%v err=%v", ok, err)
	}
	if same, err := names(l.f, dir); err != nil || !same {
		t.Fatalf("names(dir) = %v, %v", same, err)
	}
	moved := dir + ".old"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(dir, 0o755)
	if same, err := names(l.f, dir); err != nil || same {
		t.Fatalf("names after the directory was replaced = %v, %v", same, err)
	}
	l.Release()
	l2, ok, err := TryLockDir(moved)
	if err != nil || !ok {
		t.Fatalf("lock after release: %v %v", ok, err)
	}
	l2.Release()
	if _, _, err := TryLockDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("lock of a missing directory succeeded")
	}
}
