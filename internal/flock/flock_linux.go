// Package flock serialises processes (and goroutines) on a lock file.
package flock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Lock is a held exclusive lock.
type Lock struct {
	f    *os.File
	path string
}

// Acquire blocks until it holds an exclusive flock on path, creating the
// file if needed. flock locks belong to the open file description, so two
// goroutines of one process exclude each other as two processes do, and the
// kernel drops the lock when a crashed holder's file is closed.
func Acquire(path string) (*Lock, error) {
	l, _, err := acquire(path, unix.LOCK_EX)
	return l, err
}

// TryAcquire is Acquire that returns ok=false instead of waiting.
func TryAcquire(path string) (l *Lock, ok bool, err error) {
	return acquire(path, unix.LOCK_EX|unix.LOCK_NB)
}

// acquire locks the file at path. Lock files may be removed (Remove) by a
// holder, so after locking it checks that path still names the locked
// file; if not, the lock is on an unlinked file nobody else will see, and it
// tries again on the new one.
func acquire(path string, how int) (*Lock, bool, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		if ok, err := flockFile(f, how); !ok || err != nil {
			f.Close()
			return nil, false, err
		}
		same, err := names(f, path)
		if same {
			return &Lock{f: f, path: path}, true, nil
		}
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
	}
}

// names reports whether path still names the open file f: between an open
// and its flock, another holder may have removed the path (and made it
// again).
func names(f *os.File, path string) (bool, error) {
	var held, named unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &held); err != nil {
		return false, err
	}
	if err := unix.Stat(path, &named); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	return held.Dev == named.Dev && held.Ino == named.Ino, nil
}

// flockFile flocks f; ok=false when LOCK_NB found it held elsewhere.
func flockFile(f *os.File, how int) (ok bool, err error) {
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EWOULDBLOCK:
		return false, nil
	case err != nil:
		return false, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return true, nil
}

// TryLockDir takes an exclusive flock on the directory dir itself, without
// waiting: for state that lives in a directory which is removed as a whole.
// ok is false when another process holds it, or when dir was removed or
// replaced before the lock was taken (the lock would be on a directory
// nobody else sees).
func TryLockDir(dir string) (*Lock, bool, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", dir, err)
	}
	if ok, err := flockFile(f, unix.LOCK_EX|unix.LOCK_NB); !ok || err != nil {
		f.Close()
		return nil, false, err
	}
	if same, err := names(f, dir); err != nil || !same {
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", dir, err)
		}
		return nil, false, nil
	}
	return &Lock{f: f, path: dir}, true, nil
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

// Remove deletes the lock file while holding the lock, then releases it.
// Waiters that locked the removed file notice and lock the path afresh.
func (l *Lock) Remove() error {
	if l == nil || l.f == nil {
		return errors.New("flock: Remove of a released lock")
	}
	err := os.Remove(l.path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, l.Release())
}
