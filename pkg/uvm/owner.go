package uvm

import (
	"errors"
	"fmt"
	"os"
)

// ErrNotOwner is returned for what only the process that started a UVM
// may do: hot-plug attachments (their controllers' state lives in that
// process) and stopping a UVM that belongs to a live process.
var ErrNotOwner = errors.New("this process does not own the UVM")

// Owner is the process a UVM dies with. Its start time (clock ticks since
// boot, /proc/<pid>/stat field 22) tells a reused PID apart.
type Owner struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// self is this process as an Owner.
func self() *Owner {
	start, _ := procStart(os.Getpid())
	return &Owner{PID: os.Getpid(), Start: start}
}

// Alive reports whether the owner process still runs.
func (o *Owner) Alive() bool {
	start, err := procStart(o.PID)
	return err == nil && start == o.Start
}

func (o *Owner) String() string { return fmt.Sprintf("process %d", o.PID) }

// lockUVM takes the UVM directory's lock without waiting; ok is false when
// another process holds it (an owner, a create or start in progress, a gc).
// The kernel drops the lock when its holder dies, even by SIGKILL, so a
// free lock on an owned UVM means its owner is gone. The lock is on the
// directory itself, so taking it never creates a file in a directory that
// is being removed; one the path no longer names (removed, made again)
// does not count.
func lockUVM(dir string) (l *dirLock, ok bool, err error) { return tryLockDir(dir) }
