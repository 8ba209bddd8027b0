// Package flock serialises processes (and goroutines) on a lock file.
package flock

import (
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

// Lock is a held exclusive lock.
type Lock struct {
	f    *os.File
	path string
}

func lockFile(path string, flags uint32) (*Lock, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	ol := new(windows.Overlapped)
	err = windows.LockFileEx(windows.Handle(f.Fd()), flags, 0, 1, 0, ol)
	if err != nil {
		f.Close()
		if err == windows.ERROR_LOCK_VIOLATION {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f, path: path}, true, nil
}

// Acquire blocks until it holds an exclusive lock on path.
func Acquire(path string) (*Lock, error) {
	l, _, err := lockFile(path, windows.LOCKFILE_EXCLUSIVE_LOCK)
	return l, err
}

// TryAcquire is Acquire that returns ok=false instead of waiting.
func TryAcquire(path string) (*Lock, bool, error) {
	return lockFile(path, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY)
}

// Release drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Remove releases the lock and deletes the lock file. Windows cannot delete
// an open file, so unlike on Linux a waiter may recreate it in between.
func (l *Lock) Remove() error {
	if l == nil || l.f == nil {
		return fmt.Errorf("flock: Remove of a released lock")
	}
	err := l.Release()
	if rerr := os.Remove(l.path); rerr != nil && !os.IsNotExist(rerr) && err == nil {
		err = rerr
	}
	return err
}
