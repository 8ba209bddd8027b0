package cimfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// FS is an image seen as an [io/fs] file system. It implements [fs.FS],
// [fs.StatFS], [fs.ReadDirFS], [fs.ReadFileFS] and [fs.ReadLinkFS], so
// [fs.WalkDir], [fs.Sub], [os.CopyFS], archive/tar's AddFS and
// [testing/fstest.TestFS] work on it. It is safe for concurrent use; the
// files it opens are not. Closing the image ends its use.
//
// Names follow io/fs: slash-separated, unrooted, "." for the root,
// checked with [fs.ValidPath] (a backslash is part of a name, never a
// separator). The differences from a POSIX file system are Windows's:
//
//   - Lookups ignore case as CimFS does on Windows, through the image's
//     upcase table: "FILES/A.TXT" opens "Files/a.txt". Names returned by
//     Stat and ReadDir are the image's spelling, not the caller's.
//     [fs.Glob] matches patterns against those spellings, case-sensitively.
//   - Reparse points are never followed: Open, Stat and Lstat all describe
//     the reparse point itself, and a path through one names nothing (a
//     link's target is a Windows path that may lie outside the image: an
//     absolute one means the container's drive). Symlinks and junctions
//     have mode [fs.ModeSymlink] and [FS.ReadLink] gives their target;
//     another reparse point is [fs.ModeIrregular] (a file whose content a
//     Windows filter provides; Read gives the stored data stream) or a
//     plain directory.
//   - Alternate data streams are not names of the file system ("a:s" names
//     nothing); reach them through the [*File] that every FileInfo's and
//     DirEntry's Sys returns ([File.Streams], [File.OpenStream]), as for
//     security descriptors, EAs and attributes.
//
// Permission bits say read-only: 0555 for directories, 0444 for the rest.
// ModTime is the last-write time. Hard links are one file under several
// names. ReadDir on a directory file gives the image's order (upcased
// names); FS.ReadDir sorts by name as io/fs requires.
//
// A corrupt image cannot make a walk loop: listing a directory under a
// second name or inside itself is an [ErrCorrupt] error, and so is a name
// that cannot be a path element ("", ".", "..", or holding '/', '\', ':'
// or NUL) or that UTF-8 cannot spell (an unpaired surrogate).
type FS struct{ img *Image }

// FS returns the image as an io/fs file system (see [FS]).
func (img *Image) FS() *FS { return &FS{img: img} }

var (
	_ fs.ReadDirFS   = (*FS)(nil)
	_ fs.StatFS      = (*FS)(nil)
	_ fs.ReadFileFS  = (*FS)(nil)
	_ fs.ReadLinkFS  = (*FS)(nil)
	_ fs.ReadDirFile = (*fsFile)(nil)
	_ io.ReaderAt    = (*fsFile)(nil)
	_ io.Seeker      = (*fsFile)(nil)
)

// Mode is f's io/fs mode, as [FS] reports it.
func (f *File) Mode() fs.FileMode {
	switch {
	case f.ReparseTag == wintar.ReparseTagSymlink || f.ReparseTag == wintar.ReparseTagMountPoint:
		return fs.ModeSymlink | 0o444
	case f.IsDir():
		return fs.ModeDir | 0o555
	case f.Attributes&AttrReparsePoint != 0:
		return fs.ModeIrregular | 0o444
	}
	return 0o444
}

// badName reports whether name cannot be one path element of an extracted
// or io/fs tree: "", ".", "..", or a name holding a separator, ':' or NUL.
func badName(name string) bool {
	return name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\:`+"\x00")
}

// resolve finds name, following no reparse point.
func (fsys *FS) resolve(op, name string) (*File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	img := fsys.img
	f, err := img.file(img.root, "")
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	if name == "." {
		return f, nil
	}
	for elem := range strings.SplitSeq(name, "/") {
		if !f.Mode().IsDir() {
			return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		if f, err = img.lookup(f, elem); err != nil {
			return nil, &fs.PathError{Op: op, Path: name, Err: err}
		}
	}
	return f, nil
}

// Open opens the file or directory at name (see [FS] for the rules).
func (fsys *FS) Open(name string) (fs.File, error) {
	f, err := fsys.resolve("open", name)
	if err != nil {
		return nil, err
	}
	of := &fsFile{fsys: fsys, path: name, info: infoOf(name, f)}
	if f.Mode().IsDir() {
		return of, nil
	}
	if f.IsDir() { // a directory symlink or junction: no content
		of.r = io.NewSectionReader(zeros{}, 0, 0)
		return of, nil
	}
	if of.r, err = f.Open(); err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return of, nil
}

// Stat describes the file at name; a reparse point is not followed.
func (fsys *FS) Stat(name string) (fs.FileInfo, error) {
	f, err := fsys.resolve("stat", name)
	if err != nil {
		return nil, err
	}
	return infoOf(name, f), nil
}

// Lstat is Stat: FS follows no reparse point.
func (fsys *FS) Lstat(name string) (fs.FileInfo, error) {
	f, err := fsys.resolve("lstat", name)
	if err != nil {
		return nil, err
	}
	return infoOf(name, f), nil
}

// ReadDir lists the directory at name, sorted by name.
func (fsys *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	d, err := fsys.resolve("readdir", name)
	if err != nil {
		return nil, err
	}
	if !d.Mode().IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errNotDir}
	}
	t, err := fsys.img.dirTable(d)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	out := make([]fs.DirEntry, 0, t.n)
	for i := range t.n {
		e, err := fsys.img.dirEntry(d, t, i)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// ReadFile returns the content of the file at name.
func (fsys *FS) ReadFile(name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	of := f.(*fsFile)
	if of.r == nil {
		return nil, &fs.PathError{Op: "read", Path: name, Err: errIsDir}
	}
	b, err := io.ReadAll(of.r)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: name, Err: err}
	}
	return b, nil
}

// ReadLink returns the target of the symlink or junction at name as the
// reparse point holds it (the print name, else the substitute name without
// `\??\`), with backslashes turned into slashes: "../lib" for a relative
// link, "C:/Windows" for an absolute one.
func (fsys *FS) ReadLink(name string) (string, error) {
	f, err := fsys.resolve("readlink", name)
	if err != nil {
		return "", err
	}
	if f.Mode()&fs.ModeSymlink == 0 {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: errors.New("not a symlink or junction")}
	}
	b, err := f.ReparseData()
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	target, _, err := wintar.DecodeReparse(b)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name,
			Err: fmt.Errorf("%w: %s: reparse data of FileID %d: %w", ErrCorrupt, fsys.img.path, f.ID, err)}
	}
	return strings.ReplaceAll(target, `\`, "/"), nil
}

var (
	errNotDir = errors.New("not a directory")
	errIsDir  = errors.New("is a directory")
)

// dirEntry decodes entry i of directory d's table t. A directory listed
// must be listed nowhere else, so that no walk can loop or fan out.
func (img *Image) dirEntry(d *File, t linkTable, i int) (fileInfo, error) {
	e := t.entry(i)
	name := decodeName(e.name)
	if badName(name) || !slices.Equal(encodeName(name), e.name) {
		return fileInfo{}, fmt.Errorf("%w: %s: directory FileID %d: entry %d, name %q, cannot be a path element",
			ErrCorrupt, img.path, d.ID, i, name)
	}
	f, err := img.file(binary.LittleEndian.Uint32(e.value), name)
	if err != nil {
		return fileInfo{}, err
	}
	if f.Mode().IsDir() {
		if err := img.claimDir(f.ID, dirLink{d.ID, uint32(i)}); err != nil {
			return fileInfo{}, err
		}
	}
	return fileInfo{name: name, f: f}, nil
}

// dirLink is where a directory was listed: its parent and entry index.
type dirLink struct{ parent, index uint32 }

// dirLinks remembers, for every directory FS has listed, where it was
// listed; it costs a few bytes per directory seen.
type dirLinks struct {
	mu sync.Mutex
	m  map[uint32]dirLink
}

// claimDir records that directory id is entry l; a directory listed in
// two places (a loop, or a hard-linked directory) is corrupt.
func (img *Image) claimDir(id uint32, l dirLink) error {
	if id == img.root {
		return fmt.Errorf("%w: %s: the root directory is listed in directory FileID %d", ErrCorrupt, img.path, l.parent)
	}
	img.links.mu.Lock()
	defer img.links.mu.Unlock()
	if img.links.m == nil {
		img.links.m = map[uint32]dirLink{}
	}
	if prev, ok := img.links.m[id]; ok && prev != l {
		return fmt.Errorf("%w: %s: directory FileID %d is listed twice (in directory FileID %d and %d)",
			ErrCorrupt, img.path, id, prev.parent, l.parent)
	}
	img.links.m[id] = l
	return nil
}

// fileInfo is a File under a name: its fs.FileInfo and fs.DirEntry.
type fileInfo struct {
	name string
	f    *File
}

func infoOf(p string, f *File) fileInfo {
	if p == "." {
		return fileInfo{name: ".", f: f}
	}
	return fileInfo{name: f.Name, f: f}
}

func (fi fileInfo) Name() string               { return fi.name }
func (fi fileInfo) Size() int64                { return fi.f.Size }
func (fi fileInfo) Mode() fs.FileMode          { return fi.f.Mode() }
func (fi fileInfo) Type() fs.FileMode          { return fi.f.Mode().Type() }
func (fi fileInfo) ModTime() time.Time         { return fi.f.LastWriteTime }
func (fi fileInfo) IsDir() bool                { return fi.f.Mode().IsDir() }
func (fi fileInfo) Sys() any                   { return fi.f }
func (fi fileInfo) Info() (fs.FileInfo, error) { return fi, nil }
func (fi fileInfo) String() string             { return fs.FormatFileInfo(fi) }

// fsFile is an open file or directory of an FS.
type fsFile struct {
	fsys   *FS
	path   string
	info   fileInfo
	r      *io.SectionReader // nil for a directory
	table  *linkTable        // a directory's, read on the first ReadDir
	pos    int
	closed bool
}

func (f *fsFile) Stat() (fs.FileInfo, error) {
	if f.closed {
		return nil, &fs.PathError{Op: "stat", Path: f.path, Err: fs.ErrClosed}
	}
	return f.info, nil
}

// content checks f can be read as a file.
func (f *fsFile) content(op string) error {
	switch {
	case f.closed:
		return &fs.PathError{Op: op, Path: f.path, Err: fs.ErrClosed}
	case f.r == nil:
		return &fs.PathError{Op: op, Path: f.path, Err: errIsDir}
	}
	return nil
}

func (f *fsFile) Read(p []byte) (int, error) {
	if err := f.content("read"); err != nil {
		return 0, err
	}
	return f.r.Read(p)
}

func (f *fsFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.content("read"); err != nil {
		return 0, err
	}
	return f.r.ReadAt(p, off)
}

func (f *fsFile) Seek(off int64, whence int) (int64, error) {
	if err := f.content("seek"); err != nil {
		return 0, err
	}
	return f.r.Seek(off, whence)
}

// ReadDir reads the next entries of a directory in the image's order.
func (f *fsFile) ReadDir(n int) ([]fs.DirEntry, error) {
	switch {
	case f.closed:
		return nil, &fs.PathError{Op: "readdir", Path: f.path, Err: fs.ErrClosed}
	case f.r != nil:
		return nil, &fs.PathError{Op: "readdir", Path: f.path, Err: errNotDir}
	}
	img := f.fsys.img
	if f.table == nil {
		t, err := img.dirTable(f.info.f)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: f.path, Err: err}
		}
		f.table = &t
	}
	rest := f.table.n - f.pos
	if n > 0 {
		if rest == 0 {
			return nil, io.EOF
		}
		rest = min(rest, n)
	}
	out := make([]fs.DirEntry, 0, rest)
	for range rest {
		e, err := img.dirEntry(f.info.f, *f.table, f.pos)
		if err != nil {
			return out, &fs.PathError{Op: "readdir", Path: f.path, Err: err}
		}
		out = append(out, e)
		f.pos++
	}
	return out, nil
}

func (f *fsFile) Close() error {
	if f.closed {
		return &fs.PathError{Op: "close", Path: f.path, Err: fs.ErrClosed}
	}
	f.closed, f.r, f.table = true, nil, nil
	return nil
}
