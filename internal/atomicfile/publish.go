package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
)

// OpKind names a step that makes written state durable.
type OpKind string

// The steps Watch reports.
const (
	OpSyncFile OpKind = "sync-file" // a file's data and size flushed
	OpSyncDir  OpKind = "sync-dir"  // a directory's entries flushed
	OpRename   OpKind = "rename"    // Path renamed to To
	OpLink     OpKind = "link"      // Path linked as To
)

// Op is one completed step, as Watch reports it.
type Op struct {
	Kind OpKind
	Path string
	To   string // OpRename, OpLink: the new name
}

var watchers struct {
	sync.Mutex
	next int
	fns  map[int]func(Op)
}

// Watch calls fn after every step of this package that flushes, renames or
// links, until stop is called. It exists for tests: fsync cannot be observed
// from outside, but a test can check that a publish path flushes what it
// renames, and in which order. fn must be safe for concurrent use.
func Watch(fn func(Op)) (stop func()) {
	watchers.Lock()
	defer watchers.Unlock()
	if watchers.fns == nil {
		watchers.fns = map[int]func(Op){}
	}
	id := watchers.next
	watchers.next++
	watchers.fns[id] = fn
	return func() {
		watchers.Lock()
		delete(watchers.fns, id)
		watchers.Unlock()
	}
}

func notify(op Op) {
	watchers.Lock()
	fns := make([]func(Op), 0, len(watchers.fns))
	for _, fn := range watchers.fns {
		fns = append(fns, fn)
	}
	watchers.Unlock()
	for _, fn := range fns {
		fn(op)
	}
}

// syncOpen flushes an open file and reports it.
func syncOpen(f *os.File) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	notify(Op{Kind: OpSyncFile, Path: f.Name()})
	return nil
}

// SyncFile flushes the data of the file at path.
func SyncFile(path string) error {
	flag := os.O_RDONLY
	if runtime.GOOS == "windows" {
		flag = os.O_RDWR // FlushFileBuffers needs write access
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	return syncOpen(f)
}

// SyncTree flushes every regular file and directory under dir, dir last:
// what a directory built in a temp place holds before it is renamed into
// view. Symbolic links are entries of their directory and are flushed with it.
func SyncTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir():
			dirs = append(dirs, p)
		case d.Type().IsRegular():
			return SyncFile(p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	// Walk order is parents first: flush children's directories first.
	for _, d := range slices.Backward(dirs) {
		if err := SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// Rename renames oldpath to newpath and flushes the directory entries that
// changed: newpath's directory, and oldpath's when it is another one.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err // a *LinkError naming both paths
	}
	notify(Op{Kind: OpRename, Path: oldpath, To: newpath})
	src, dst := filepath.Dir(filepath.Clean(oldpath)), filepath.Dir(filepath.Clean(newpath))
	if err := SyncDir(dst); err != nil {
		return err
	}
	if src != dst {
		return SyncDir(src)
	}
	return nil
}

// Publish makes tmp, a file or a directory built out of view, appear at
// final so that a crash at any point leaves final either absent or whole:
// it flushes tmp (a directory's files and directories, then the directory
// itself), renames it to final and flushes the directories whose entries
// changed. Without the first flush the rename can reach the disk before
// the data does, and a crash leaves final in place with empty or partial
// files. final must not exist (or be an empty directory, for a directory).
func Publish(tmp, final string) error {
	fi, err := os.Lstat(tmp)
	if err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	switch {
	case fi.IsDir():
		err = SyncTree(tmp)
	case fi.Mode().IsRegular():
		err = SyncFile(tmp)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	if err := Rename(tmp, final); err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	return nil
}
