package cimfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// FileInfo is what a file carries besides its content.
type FileInfo struct {
	Attributes         uint32 // FILE_ATTRIBUTE_*; AttrDirectory makes a directory
	CreationTime       time.Time
	LastWriteTime      time.Time
	ChangeTime         time.Time
	LastAccessTime     time.Time
	SecurityDescriptor []byte // self-relative; nil for none
	EAs                []byte // FILE_FULL_EA_INFORMATION chain; nil for none
	ReparseData        []byte // whole REPARSE_DATA_BUFFER; nil for none
}

// Writer builds a new CIM. File content goes to the region files as it is
// added; only metadata is held in memory. Nothing appears under the final
// names before Commit, and Close without Commit removes everything. A
// Writer is not safe for concurrent use.
type Writer struct {
	dir, name  string
	guid       GUID
	parentSets []RegionSet
	base       int // region index of this image's first region
	root       *node
	small      *dataRegion
	data       *dataRegion // created on the first large file
	first      []byte      // a file's first bytes: they decide where it goes
	done       bool
}

// node is one name in the tree; hard links are nodes sharing a wfile.
type node struct {
	name   string
	parent *node
	kids   map[string]*node // by upcased name
	f      *wfile
}

type wfile struct {
	info    FileInfo
	dir     bool
	data    stream
	streams map[string]wstream // by upcased name
	names   []*node
	id      uint32
}

type wstream struct {
	name string
	s    stream
}

func upKey(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(upcaseRune(defaultUpcase, r))
	}
	return b.String()
}

// Create starts the CIM dir/name. With a parent (an open image in the same
// directory) the new image is a fork: it lists the parent's region sets,
// starts from the parent's file system, and Add/Remove change that view.
func Create(dir, name string, parent *Image) (_ *Writer, err error) {
	if name == "" || strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("CIM name %q: must be a plain file name", name)
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
		return nil, fmt.Errorf("create CIM %s: %w", filepath.Join(dir, name), fs.ErrExist)
	}
	guid, err := newGUID()
	if err != nil {
		return nil, err
	}
	w := &Writer{dir: dir, name: name, guid: guid, first: make([]byte, smallFileMax+1)}
	w.root = &node{kids: map[string]*node{}}
	w.root.f = &wfile{dir: true, names: []*node{w.root}}
	if parent != nil {
		if err := sameDir(dir, parent.dir); err != nil {
			return nil, fmt.Errorf("fork %s from %s: %w", name, parent.path, err)
		}
		w.parentSets = append(slices.Clone(parent.Parents), parent.Own)
		w.base = parent.Regions()
		if w.base+3 > 0x10000 {
			return nil, fmt.Errorf("fork %s from %s: too many regions (%d)", name, parent.path, w.base)
		}
		if err := w.loadParent(parent); err != nil {
			return nil, fmt.Errorf("fork %s from %s: %w", name, parent.path, err)
		}
	}
	if w.small, err = newDataRegion(dir, 1, regionSmallData, regionName(guid, 1)); err != nil {
		return nil, err
	}
	return w, nil
}

// sameDir checks a fork lives beside its parent: its regions are shared.
func sameDir(a, b string) error {
	sa, err := os.Stat(a)
	if err != nil {
		return err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return err
	}
	if !os.SameFile(sa, sb) {
		return fmt.Errorf("the parent CIM is in %s, not in %s: forks must share the parent's directory", b, a)
	}
	return nil
}

// loadParent copies the parent's merged view into the tree. Data streams
// keep pointing into the parent's regions: the fork's index space starts
// with the same region sets, so those offsets stay valid.
func (w *Writer) loadParent(img *Image) error {
	byID := map[uint32]*wfile{}
	return img.Walk(func(p string, f *File) error {
		info, err := f.Info()
		if err != nil {
			return err
		}
		if p == "" {
			w.root.f.info = info
			return nil
		}
		dir, err := w.lookupDir(pathParent(p))
		if err != nil {
			return err
		}
		wf := byID[f.ID]
		if wf == nil {
			wf = &wfile{info: info, dir: f.IsDir(), data: f.rec.data}
			if wf.dir {
				wf.data = stream{}
			}
			if err := img.checkStream(wf.data, p); err != nil {
				return err
			}
			ss, err := f.Streams()
			if err != nil {
				return err
			}
			for _, s := range ss {
				if err := img.checkStream(s.s, p+":"+s.Name); err != nil {
					return err
				}
				wf.setStream(s.Name, s.s)
			}
			byID[f.ID] = wf
		}
		w.link(dir, f.Name, wf)
		return nil
	})
}

// checkStream makes sure content the fork will point at lies inside the
// parent's own index space (a bad offset there would silently name one of
// the fork's regions).
func (img *Image) checkStream(s stream, what string) error {
	switch {
	case s.sparse || s.length == 0:
		return nil
	case s.typ == streamPeImage:
		return img.check(s.ro, peHeaderLen, what)
	}
	return img.check(s.ro, s.length, what)
}

func pathParent(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[:i]
	}
	return ""
}

// Info loads everything Add takes for f.
func (f *File) Info() (FileInfo, error) {
	fi := FileInfo{Attributes: f.Attributes, CreationTime: f.CreationTime, LastWriteTime: f.LastWriteTime,
		ChangeTime: f.ChangeTime, LastAccessTime: f.LastAccessTime}
	var err1, err2, err3 error
	fi.SecurityDescriptor, err1 = f.SecurityDescriptor()
	fi.EAs, err2 = f.EAs()
	fi.ReparseData, err3 = f.ReparseData()
	return fi, errors.Join(err1, err2, err3)
}

func (wf *wfile) setStream(name string, s stream) {
	if wf.streams == nil {
		wf.streams = map[string]wstream{}
	}
	wf.streams[upKey(name)] = wstream{name: name, s: s}
}

func (w *Writer) usable() error {
	if w.done {
		return fmt.Errorf("CIM %s: writer already committed or closed", w.name)
	}
	return nil
}

// find returns the node at p, or nil.
func (w *Writer) find(parts []string) *node {
	n := w.root
	for _, c := range parts {
		if n = n.kids[upKey(c)]; n == nil {
			return nil
		}
	}
	return n
}

func (w *Writer) lookupDir(p string) (*node, error) {
	parts, err := splitPath(p)
	if err != nil {
		return nil, err
	}
	n := w.find(parts)
	if n == nil || !n.f.dir {
		return nil, fmt.Errorf("CIM %s: parent directory %q does not exist: %w", w.name, p, fs.ErrNotExist)
	}
	return n, nil
}

func (w *Writer) link(dir *node, name string, wf *wfile) *node {
	n := &node{name: name, parent: dir, f: wf}
	if wf.dir {
		n.kids = map[string]*node{}
	}
	dir.kids[upKey(name)] = n
	wf.names = append(wf.names, n)
	return n
}

// unlink removes one name (and a directory's whole subtree).
func (w *Writer) unlink(n *node) {
	delete(n.parent.kids, upKey(n.name))
	n.f.names = slices.DeleteFunc(n.f.names, func(x *node) bool { return x == n })
	for _, k := range n.kids {
		w.unlink(k)
	}
}

func checkInfo(info FileInfo) error {
	if len(info.SecurityDescriptor) > 0xffff {
		return fmt.Errorf("security descriptor of %d bytes is too large", len(info.SecurityDescriptor))
	}
	if len(info.ReparseData) > 0 {
		if len(info.ReparseData) < 8 || len(info.ReparseData) > 0xffff ||
			int(binary.LittleEndian.Uint16(info.ReparseData[4:]))+8 != len(info.ReparseData) {
			return fmt.Errorf("reparse buffer of %d bytes does not match its length field", len(info.ReparseData))
		}
	}
	if err := checkEAs(info.EAs); err != nil {
		return err
	}
	for _, t := range []time.Time{info.CreationTime, info.LastWriteTime, info.ChangeTime, info.LastAccessTime} {
		if _, err := timeToFiletime(t); err != nil {
			return err
		}
	}
	return nil
}

// checkEAs validates a FILE_FULL_EA_INFORMATION chain.
func checkEAs(b []byte) error {
	if len(b) > 0xffff {
		return fmt.Errorf("EAs of %d bytes are too large", len(b))
	}
	for off := 0; off < len(b); {
		e := b[off:]
		if len(e) < 8 {
			return fmt.Errorf("EA entry at offset %d is truncated", off)
		}
		next := int(binary.LittleEndian.Uint32(e))
		need := 8 + int(e[5]) + 1 + int(binary.LittleEndian.Uint16(e[6:]))
		if e[5] == 0 || need > len(e) || (next != 0 && next < need) {
			return fmt.Errorf("EA entry at offset %d is malformed", off)
		}
		if next == 0 {
			break
		}
		off += next
	}
	return nil
}

// Add adds (or replaces) the file or directory at p ("a/b" or `a\b`; the
// parent must exist). r is the file's content, read to EOF and streamed
// into the region files; nil means empty (r is not read for directories). Re-adding a directory updates its
// metadata and keeps its children; replacing anything else drops the old name.
func (w *Writer) Add(p string, info FileInfo, r io.Reader) error {
	if err := w.usable(); err != nil {
		return err
	}
	parts, err := splitPath(p)
	if err != nil {
		return fmt.Errorf("add to CIM %s: %w", w.name, err)
	}
	if err := checkInfo(info); err != nil {
		return fmt.Errorf("add %q to CIM %s: %w", p, w.name, err)
	}
	isDir := info.Attributes&AttrDirectory != 0
	if len(parts) == 0 {
		if !isDir {
			return fmt.Errorf("add to CIM %s: the root must be a directory", w.name)
		}
		w.root.f.info = info
		return nil
	}
	dir, err := w.lookupDir(strings.Join(parts[:len(parts)-1], "/"))
	if err != nil {
		return err
	}
	var data stream
	if !isDir && r != nil {
		if data, err = w.storeData(r); err != nil {
			return fmt.Errorf("add %q to CIM %s: %w", p, w.name, err)
		}
	}
	name := parts[len(parts)-1]
	if old := dir.kids[upKey(name)]; old != nil {
		if old.f.dir && isDir {
			old.f.info = info
			return nil
		}
		w.unlink(old)
	}
	w.link(dir, name, &wfile{info: info, dir: isDir, data: data})
	return nil
}

// storeData streams r into the small-data region (short content) or the
// data region; memory use does not depend on the content's size.
func (w *Writer) storeData(r io.Reader) (stream, error) {
	first := w.first
	n, err := io.ReadFull(r, first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		if n == 0 {
			return stream{}, nil
		}
		off, err := w.small.putSmall(first[:n])
		if err != nil {
			return stream{}, err
		}
		return stream{ro: makeRO(w.base+w.small.n, off), length: int64(n)}, nil
	}
	if err != nil {
		return stream{}, fmt.Errorf("read file data: %w", err)
	}
	if w.data == nil {
		if w.data, err = newDataRegion(w.dir, 2, regionData, regionName(w.guid, 2)); err != nil {
			return stream{}, err
		}
	}
	off, length, err := w.data.putLarge(first, r)
	if err != nil {
		return stream{}, err
	}
	return stream{ro: makeRO(w.base+w.data.n, off), length: length}, nil
}

// AddAlternateStream adds (or replaces) the alternate data stream called
// stream on the file or directory at p.
func (w *Writer) AddAlternateStream(p, streamName string, r io.Reader) error {
	if err := w.usable(); err != nil {
		return err
	}
	streamName = strings.TrimSuffix(streamName, ":$DATA")
	if err := checkName(streamName); err != nil {
		return fmt.Errorf("add stream to %q in CIM %s: %w", p, w.name, err)
	}
	parts, err := splitPath(p)
	if err != nil {
		return fmt.Errorf("add stream to CIM %s: %w", w.name, err)
	}
	n := w.find(parts)
	if n == nil {
		return fmt.Errorf("add stream %q to CIM %s: %q: %w", streamName, w.name, p, fs.ErrNotExist)
	}
	s := stream{}
	if r != nil {
		if s, err = w.storeData(r); err != nil {
			return fmt.Errorf("add stream %q to %q in CIM %s: %w", streamName, p, w.name, err)
		}
	}
	n.f.setStream(streamName, s)
	return nil
}

// AddLink gives the file at oldPath the additional name newPath (a hard
// link); an existing non-directory at newPath is replaced.
func (w *Writer) AddLink(oldPath, newPath string) error {
	if err := w.usable(); err != nil {
		return err
	}
	op, err := splitPath(oldPath)
	if err != nil {
		return fmt.Errorf("link in CIM %s: %w", w.name, err)
	}
	np, err := splitPath(newPath)
	if err != nil || len(np) == 0 {
		return fmt.Errorf("link in CIM %s: bad new name %q: %v", w.name, newPath, err)
	}
	target := w.find(op)
	if target == nil {
		return fmt.Errorf("link %q to %q in CIM %s: %w", newPath, oldPath, w.name, fs.ErrNotExist)
	}
	if target.f.dir {
		return fmt.Errorf("link %q to %q in CIM %s: directories cannot be hard-linked", newPath, oldPath, w.name)
	}
	dir, err := w.lookupDir(strings.Join(np[:len(np)-1], "/"))
	if err != nil {
		return err
	}
	name := np[len(np)-1]
	if old := dir.kids[upKey(name)]; old != nil {
		if old.f == target.f {
			return nil
		}
		if old.f.dir {
			return fmt.Errorf("link %q in CIM %s: a directory has that name", newPath, w.name)
		}
		w.unlink(old)
	}
	w.link(dir, name, target.f)
	return nil
}

// Remove deletes the name p (with everything below a directory) from the
// image's view; for a fork that hides the parent's file. A missing path is
// an error wrapping fs.ErrNotExist.
func (w *Writer) Remove(p string) error {
	if err := w.usable(); err != nil {
		return err
	}
	parts, err := splitPath(p)
	if err != nil {
		return fmt.Errorf("remove from CIM %s: %w", w.name, err)
	}
	if len(parts) == 0 {
		return fmt.Errorf("remove from CIM %s: cannot remove the root", w.name)
	}
	n := w.find(parts)
	if n == nil {
		return fmt.Errorf("remove %q from CIM %s: %w", p, w.name, fs.ErrNotExist)
	}
	w.unlink(n)
	return nil
}

// Close discards an uncommitted image: its temp files are removed.
func (w *Writer) Close() error {
	if w.done {
		return nil
	}
	w.done = true
	var errs []error
	for _, r := range []*dataRegion{w.small, w.data} {
		if r != nil {
			r.settle(true) // ends its hashing goroutines
			r.f.Close()
			if err := os.Remove(r.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Commit writes the metadata region, the objectid files and the .cim and
// moves every file to its final name; on failure nothing is left.
func (w *Writer) Commit() (err error) {
	if err := w.usable(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	meta, fsOff, err := w.buildMetadata()
	if err != nil {
		return err
	}

	type out struct {
		final string
		tmp   string // already written temp file, or "" for data below
		data  []byte
	}
	regions := []*dataRegion{w.small}
	if w.data != nil {
		regions = append(regions, w.data)
	}
	outs := []out{{final: regionName(w.guid, 0), data: meta.buf.Bytes()},
		{final: objectIDName(w.guid, 0), data: meta.objs.objectIDFile(0, regionMetadata)}}
	for _, r := range regions {
		r.settle(true) // every digest, for the objectid file
		if err := r.f.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", r.f.Name(), err)
		}
		outs = append(outs, out{final: r.final, tmp: r.f.Name()},
			out{final: objectIDName(w.guid, r.n), data: r.objs.objectIDFile(r.n, r.typ)})
	}
	outs = append(outs, out{final: w.name, data: w.imageHeader(1+len(regions), fsOff)})

	var placed []string
	defer func() {
		if err != nil {
			for _, p := range placed {
				os.Remove(p)
			}
		}
	}()
	for _, o := range outs {
		final := filepath.Join(w.dir, o.final)
		if o.tmp != "" {
			// Link, unlike rename, never replaces a file that appeared meanwhile.
			if err := os.Link(o.tmp, final); err != nil {
				return fmt.Errorf("commit CIM %s: %w", w.name, err)
			}
			placed = append(placed, final)
			continue
		}
		if err := atomicfile.Create(final, 0o644, func(f *os.File) error {
			_, err := f.Write(o.data)
			return err
		}); err != nil {
			return fmt.Errorf("commit CIM %s: %w", w.name, err)
		}
		placed = append(placed, final)
	}
	if err := atomicfile.SyncDir(w.dir); err != nil {
		return fmt.Errorf("commit CIM %s: %w", w.name, err)
	}
	slog.Debug("cimfs: committed", "cim", filepath.Join(w.dir, w.name), "regions", 1+len(regions), "set", w.guid.String())
	w.Close() // drops the temp names; the linked final names stay
	return nil
}

func (w *Writer) imageHeader(count int, fsOff regionOffset) []byte {
	b := make([]byte, imageHeaderLen+regionSetLen*len(w.parentSets))
	putCommonHeader(b, imageHeaderLen, hdrTypeImage)
	le := binary.LittleEndian
	copy(b[0x20:], w.guid[:])
	le.PutUint16(b[0x30:], uint16(count))
	le.PutUint64(b[0x38:], uint64(fsOff))
	le.PutUint16(b[0x46:], uint16(len(w.parentSets)))
	for i, s := range w.parentSets {
		e := b[imageHeaderLen+regionSetLen*i:]
		copy(e, s.ID[:])
		le.PutUint16(e[16:], uint16(s.Count))
	}
	return b
}
