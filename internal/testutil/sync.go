package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// SyncLog records the flushes, renames and links internal/atomicfile does
// under a directory while a test runs. An fsync cannot be observed from
// outside, but its place among the steps can: a publish path that goes
// through atomicfile shows its data flushed before the rename and the
// directory flushed after it.
type SyncLog struct {
	mu  sync.Mutex
	ops []atomicfile.Op
}

// WatchSync starts a SyncLog of the steps under dir; it stops when the test ends.
func WatchSync(t testing.TB, dir string) *SyncLog {
	l := &SyncLog{}
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	t.Cleanup(atomicfile.Watch(func(op atomicfile.Op) {
		if strings.HasPrefix(op.Path, prefix) || strings.HasPrefix(op.To, prefix) {
			l.mu.Lock()
			l.ops = append(l.ops, op)
			l.mu.Unlock()
		}
	}))
	return l
}

// Ops returns the steps so far.
func (l *SyncLog) Ops() []atomicfile.Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]atomicfile.Op(nil), l.ops...)
}

// Published checks that final (a file, or a directory holding files, given
// relative to it) was renamed or linked into place from a temp name whose
// data was flushed first, and that final's directory was flushed after. It
// returns the temp name ("" when there was none).
func (l *SyncLog) Published(t testing.TB, final string, files ...string) string {
	t.Helper()
	ops := l.Ops()
	at := -1
	for i, op := range ops {
		if (op.Kind == atomicfile.OpRename || op.Kind == atomicfile.OpLink) && op.To == final {
			at = i
		}
	}
	if at < 0 {
		t.Errorf("%s was not published through internal/atomicfile; steps: %v", final, ops)
		return ""
	}
	tmp := ops[at].Path
	flushed := func(kind atomicfile.OpKind, p string, from, to int) bool {
		for _, op := range ops[from:to] {
			if op.Kind == kind && op.Path == p {
				return true
			}
		}
		return false
	}
	fi, err := os.Stat(final)
	if err != nil {
		t.Errorf("published %s: %v", final, err)
		return tmp
	}
	if fi.IsDir() {
		if !flushed(atomicfile.OpSyncDir, tmp, 0, at) {
			t.Errorf("%s: directory %s not flushed before its rename; steps: %v", final, tmp, ops)
		}
		for _, f := range files {
			if !flushed(atomicfile.OpSyncFile, filepath.Join(tmp, f), 0, at) {
				t.Errorf("%s: %s not flushed before the rename; steps: %v", final, f, ops)
			}
		}
	} else if !flushed(atomicfile.OpSyncFile, tmp, 0, at) {
		t.Errorf("%s: %s not flushed before its rename; steps: %v", final, tmp, ops)
	}
	if !flushed(atomicfile.OpSyncDir, filepath.Dir(final), at+1, len(ops)) {
		t.Errorf("%s: its directory not flushed after the rename; steps: %v", final, ops)
	}
	return tmp
}
