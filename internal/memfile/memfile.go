// Package memfile is a file held in memory, for tests of on-disk formats:
// fuzzing without touching the disk, and crash tests that record every
// change and rebuild the file as a crash (or a power loss dropping unsynced
// writes) at any point would have left it.
package memfile

import (
	"bytes"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// File is an in-memory file: ReaderAt, WriterAt, Truncate, Sync, Close and
// Stat. B is its content.
type File struct {
	mu sync.Mutex
	B  []byte
}

func (m *File) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.B)) {
		return 0, io.EOF
	}
	n := copy(p, m.B[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *File) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.grow(off + int64(len(p)))
	return copy(m.B[off:], p), nil
}

func (m *File) grow(n int64) {
	if n > int64(len(m.B)) {
		m.B = append(m.B, make([]byte, n-int64(len(m.B)))...)
	}
}

func (m *File) Truncate(n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.grow(n)
	m.B = m.B[:n]
	return nil
}

func (m *File) Sync() error  { return nil }
func (m *File) Close() error { return nil }

func (m *File) Stat() (fs.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return info(len(m.B)), nil
}

type info int64

func (s info) Name() string       { return "mem" }
func (s info) Size() int64        { return int64(s) }
func (s info) Mode() fs.FileMode  { return 0o600 }
func (s info) ModTime() time.Time { return time.Time{} }
func (s info) IsDir() bool        { return false }
func (s info) Sys() any           { return nil }

// Op is one write, truncate (Truncate ≥ 0) or sync that reached a file.
type Op struct {
	Sync     bool
	Truncate int64
	Off      int64
	Data     []byte
}

// Apply replays op on m.
func (op Op) Apply(m *File) {
	switch {
	case op.Sync:
	case op.Truncate >= 0:
		m.Truncate(op.Truncate)
	default:
		m.WriteAt(op.Data, op.Off)
	}
}

// Recorder is a File that logs every change in Ops.
type Recorder struct {
	File
	Ops []Op
}

func (r *Recorder) WriteAt(p []byte, off int64) (int, error) {
	r.Ops = append(r.Ops, Op{Truncate: -1, Off: off, Data: bytes.Clone(p)})
	return r.File.WriteAt(p, off)
}

func (r *Recorder) Truncate(n int64) error {
	r.Ops = append(r.Ops, Op{Truncate: n})
	return r.File.Truncate(n)
}

func (r *Recorder) Sync() error {
	r.Ops = append(r.Ops, Op{Sync: true, Truncate: -1})
	return nil
}

// PowerLoss rebuilds the file base became through ops as a power loss at
// op cut could leave it, lastSync being the index after the last Sync:
// the ops before lastSync applied; each 4 KiB page, and the length, as of
// its own random moment between lastSync and cut (the page cache writes
// pages back in any order).
func PowerLoss(rng *rand.Rand, base []byte, ops []Op, lastSync, cut int) *File {
	const page = 4096
	m := &File{B: bytes.Clone(base)}
	for _, op := range ops[:lastSync] {
		op.Apply(m)
	}
	lengths := []int{len(m.B)} // the length after each step
	for _, op := range ops[lastSync:cut] {
		n := lengths[len(lengths)-1]
		switch {
		case op.Truncate >= 0:
			n = int(op.Truncate)
		case !op.Sync:
			n = max(n, int(op.Off)+len(op.Data))
		}
		lengths = append(lengths, n)
	}
	steps := len(lengths)
	pages := (slices.Max(lengths) + page - 1) / page
	at := make([][]int, steps) // the pages written back after each step
	for p := range pages {
		s := rng.IntN(steps)
		at[s] = append(at[s], p)
	}
	out := make([]byte, pages*page)
	for s := range steps {
		for _, p := range at[s] {
			copy(out[p*page:(p+1)*page], m.B[min(p*page, len(m.B)):min((p+1)*page, len(m.B))])
		}
		if s < steps-1 {
			ops[lastSync+s].Apply(m)
		}
	}
	return &File{B: out[:lengths[rng.IntN(steps)]]}
}
