package cimfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrCorrupt is wrapped by every error about a malformed image.
var ErrCorrupt = errors.New("corrupt CimFS image")

// Limits on what an image can make the reader allocate. Region files may
// be sparse and huge, so a length that fits in its region file bounds
// nothing: these bound it instead, far above real images (a Windows Server
// Core layer has a few hundred thousand files and no directory of more
// than tens of thousands of entries). An image over them is ErrCorrupt.
const (
	// MaxObjectLen bounds one metadata object read whole: a directory,
	// back-link or stream table, or the file table directory.
	MaxObjectLen = 32 << 20
	// MaxDirEntries bounds the entries of one link table (a directory's
	// names, a file's names or its streams).
	MaxDirEntries = 1 << 20
	// MaxFiles bounds the FileIDs of an image (1 024 per file table).
	MaxFiles = 1 << 22
	// maxWalkHeld bounds the bytes Walk holds at once: the table and the
	// path of each directory from the root to where it is.
	maxWalkHeld = 256 << 20
	// maxWalkDepth is the deepest a Windows path (32 767 UTF-16 units) can go.
	maxWalkDepth = 16384
)

// Image is an open CIM: its .cim file and the region files of its own
// region set and of every parent's. It is safe for concurrent use.
type Image struct {
	path         string
	dir          string
	Major, Minor uint32
	Own          RegionSet
	Parents      []RegionSet // oldest first, as the header lists them

	regions []regionFile // region index space: parents' sets, then Own
	closers []io.Closer
	upRO    regionOffset
	ftd     []ftdEntry
	root    uint32

	upOnce sync.Once
	up     []uint16
	upErr  error

	links dirLinks // where FS has listed each directory
}

type regionFile struct {
	name string
	r    io.ReaderAt
	size int64
}

type ftdEntry struct {
	table     regionOffset
	count     int
	entrySize int
}

// Open opens the CIM at cimPath; its region and objectid files are read
// from the same directory.
func Open(cimPath string) (*Image, error) {
	dir, name := filepath.Split(cimPath)
	if dir == "" {
		dir = "."
	}
	return openFS(os.DirFS(dir), name, cimPath, filepath.Clean(dir))
}

// OpenFS opens the CIM called name in fsys, whose files must implement
// io.ReaderAt (os.DirFS's and fstest.MapFS's do).
func OpenFS(fsys fs.FS, name string) (*Image, error) {
	return openFS(fsys, name, name, ".")
}

// openFS opens name in fsys; messages call the files by their paths in dir.
func openFS(fsys fs.FS, name, display, dir string) (_ *Image, err error) {
	img := &Image{path: display, dir: dir}
	defer func() {
		if err != nil {
			img.Close()
		}
	}()
	hdr, err := readSmallFile(fsys, name, display, imageHeaderLen+regionSetLen*0xffff)
	if err != nil {
		return nil, err
	}
	name = display
	if err := checkCommonHeader(hdr, name, hdrTypeImage, imageHeaderLen); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	img.Major, img.Minor = le.Uint32(hdr[0x10:]), le.Uint32(hdr[0x14:])
	copy(img.Own.ID[:], hdr[0x20:])
	img.Own.Count = int(le.Uint16(hdr[0x30:]))
	nParents := int(le.Uint16(hdr[0x46:]))
	if len(hdr) < imageHeaderLen+regionSetLen*nParents {
		return nil, fmt.Errorf("%w: %s: %d parent region sets need %d bytes, file has %d",
			ErrCorrupt, name, nParents, imageHeaderLen+regionSetLen*nParents, len(hdr))
	}
	total := img.Own.Count
	for i := range nParents {
		b := hdr[imageHeaderLen+regionSetLen*i:]
		var s RegionSet
		copy(s.ID[:], b)
		s.Count = int(le.Uint16(b[16:]))
		img.Parents = append(img.Parents, s)
		total += s.Count
	}
	if img.Own.Count == 0 || total > 0x10000 {
		return nil, fmt.Errorf("%w: %s: region count %d (own %d) out of range", ErrCorrupt, name, total, img.Own.Count)
	}
	for _, s := range append(append([]RegionSet(nil), img.Parents...), img.Own) {
		for i := range s.Count {
			if err := img.openRegion(fsys, regionName(s.ID, i)); err != nil {
				return nil, err
			}
		}
	}
	fsRO := regionOffset(le.Uint64(hdr[0x38:]))
	b, err := img.read(fsRO, filesystemLen, "filesystem object")
	if err != nil {
		return nil, err
	}
	img.upRO = regionOffset(le.Uint64(b))
	ftdRO := regionOffset(le.Uint64(b[8:]))
	nTables := int64(le.Uint32(b[0x10:]))
	img.root = le.Uint32(b[0x14:])
	if nTables > MaxFiles/filesPerTable {
		return nil, fmt.Errorf("%w: %s: %d file tables, over the limit of %d (cimfs.MaxFiles = %d files)",
			ErrCorrupt, name, nTables, MaxFiles/filesPerTable, MaxFiles)
	}
	ftd, err := img.read(ftdRO, nTables*ftdEntryLen, "file table directory")
	if err != nil {
		return nil, err
	}
	for i := range int(nTables) {
		e := ftd[i*ftdEntryLen:]
		t := ftdEntry{table: regionOffset(le.Uint64(e)), count: int(le.Uint16(e[8:])), entrySize: int(le.Uint16(e[10:]))}
		if t.count > filesPerTable || t.entrySize < 0x58 {
			return nil, fmt.Errorf("%w: %s: file table %d: count %d, entry size %#x", ErrCorrupt, name, i, t.count, t.entrySize)
		}
		if err := img.check(t.table, int64(t.count*t.entrySize), fmt.Sprintf("file table %d", i)); err != nil {
			return nil, err
		}
		img.ftd = append(img.ftd, t)
	}
	root, err := img.file(img.root, "")
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	if !root.IsDir() {
		return nil, fmt.Errorf("%w: %s: root FileID %d is not a directory", ErrCorrupt, name, img.root)
	}
	return img, nil
}

func readSmallFile(fsys fs.FS, name, display string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open CIM %s: %w", display, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("read CIM %s: %w", display, err)
	}
	return b, nil
}

func checkCommonHeader(b []byte, name string, typ uint8, minLen int) error {
	if len(b) < minLen {
		return fmt.Errorf("%w: %s: %d bytes, shorter than its %#x-byte header", ErrCorrupt, name, len(b), minLen)
	}
	if string(b[:8]) != magic {
		return fmt.Errorf("%w: %s: bad magic %q at offset 0", ErrCorrupt, name, b[:8])
	}
	if b[0x0c] != typ {
		return fmt.Errorf("%w: %s: header type %d at offset 0xc, expected %d", ErrCorrupt, name, b[0x0c], typ)
	}
	if major := binary.LittleEndian.Uint32(b[0x10:]); major < minMajor || major > currentMajor {
		return fmt.Errorf("%w: %s: unsupported format version %d.%d at offset 0x10", ErrCorrupt, name, major, binary.LittleEndian.Uint32(b[0x14:]))
	}
	return nil
}

func (img *Image) openRegion(fsys fs.FS, name string) error {
	f, err := fsys.Open(name)
	if img.dir != "." {
		name = filepath.Join(img.dir, name)
	}
	if err != nil {
		return fmt.Errorf("CIM %s: region file: %w", img.path, err)
	}
	img.closers = append(img.closers, f)
	ra, ok := f.(io.ReaderAt)
	if !ok {
		return fmt.Errorf("CIM %s: region file %s cannot be read at offsets", img.path, name)
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("CIM %s: %w", img.path, err)
	}
	hdr := make([]byte, regionHeaderLen)
	if _, err := ra.ReadAt(hdr, 0); err != nil && st.Size() >= regionHeaderLen {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if st.Size() < regionHeaderLen {
		hdr = hdr[:st.Size()]
	}
	if err := checkCommonHeader(hdr, name, hdrTypeRegion, regionHeaderLen); err != nil {
		return err
	}
	img.regions = append(img.regions, regionFile{name: name, r: ra, size: st.Size()})
	return nil
}

// Close closes the region files.
func (img *Image) Close() error {
	var errs []error
	for _, c := range img.closers {
		errs = append(errs, c.Close())
	}
	img.closers = nil
	return errors.Join(errs...)
}

// Path is the .cim file the image was opened from.
func (img *Image) Path() string { return img.path }

// Regions is the number of region files in the image's index space.
func (img *Image) Regions() int { return len(img.regions) }

// check validates that n bytes at ro lie inside a region file.
func (img *Image) check(ro regionOffset, n int64, what string) error {
	i, off := ro.index(), ro.offset()
	if i >= len(img.regions) {
		return fmt.Errorf("%w: %s: %s at %s: no such region (image has %d)", ErrCorrupt, img.path, what, ro, len(img.regions))
	}
	rf := img.regions[i]
	if off == 0 || n < 0 || off+n > rf.size || n > rf.size {
		return fmt.Errorf("%w: %s: %s at offset %#x (%d bytes) is outside %s (%d bytes)", ErrCorrupt, img.path, what, off, n, rf.name, rf.size)
	}
	return nil
}

// read returns n bytes at ro; n is bounded by the region's size and by
// MaxObjectLen (a sparse region file may be far larger than its content).
func (img *Image) read(ro regionOffset, n int64, what string) ([]byte, error) {
	if err := img.check(ro, n, what); err != nil {
		return nil, err
	}
	if n > MaxObjectLen {
		return nil, fmt.Errorf("%w: %s: %s at %s is %d bytes, over the limit of %d (cimfs.MaxObjectLen)",
			ErrCorrupt, img.path, what, ro, n, MaxObjectLen)
	}
	rf := img.regions[ro.index()]
	b := make([]byte, n)
	if _, err := rf.r.ReadAt(b, ro.offset()); err != nil {
		return nil, fmt.Errorf("read %s of %s at offset %#x: %w", what, rf.name, ro.offset(), err)
	}
	return b, nil
}

// readPrefixed reads an object stored as a length prefix (u16 or u32)
// followed by its bytes; withPrefix keeps the prefix in the result.
func (img *Image) readPrefixed(ro regionOffset, prefix int, withPrefix bool, what string) ([]byte, error) {
	b, err := img.read(ro, int64(prefix), what)
	if err != nil {
		return nil, err
	}
	var n int64
	if prefix == 2 {
		n = int64(binary.LittleEndian.Uint16(b))
	} else {
		n = int64(binary.LittleEndian.Uint32(b))
	}
	if withPrefix {
		return img.read(ro, n, what)
	}
	return img.read(ro+regionOffset(prefix), n, what)
}

func (img *Image) upcase() ([]uint16, error) {
	img.upOnce.Do(func() {
		b, err := img.read(img.upRO, upcaseLen, "upcase table")
		if err != nil {
			img.upErr = err
			return
		}
		img.up = make([]uint16, upcaseEntries)
		for i := range img.up {
			img.up[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
	})
	return img.up, img.upErr
}

// UpcaseTable returns the image's upcase table (0x10000 entries).
func (img *Image) UpcaseTable() ([]uint16, error) {
	up, err := img.upcase()
	return append([]uint16(nil), up...), err
}

func (img *Image) record(id uint32) (record, error) {
	t, slot := int((id-1)/filesPerTable), int((id-1)%filesPerTable)
	if id == 0 || t >= len(img.ftd) || slot >= img.ftd[t].count {
		return record{}, fmt.Errorf("%w: %s: no file with FileID %d", ErrCorrupt, img.path, id)
	}
	e := img.ftd[t]
	n := min(e.entrySize, recordLenV3)
	b, err := img.read(e.table+regionOffset(slot*e.entrySize), int64(n), fmt.Sprintf("file record %d", id))
	if err != nil {
		return record{}, err
	}
	full := make([]byte, recordLenV3)
	copy(full, b)
	return getRecord(full), nil
}

// File is one file or directory of the image, as one of its names sees it.
type File struct {
	Name           string // this name's last component; "" for the root
	ID             uint32 // FileID; hard links share it
	Attributes     uint32
	CreationTime   time.Time
	LastWriteTime  time.Time
	ChangeTime     time.Time
	LastAccessTime time.Time
	Size           int64 // data length; 0 for directories
	ReparseTag     uint32

	img *Image
	rec record
}

func (img *Image) file(id uint32, name string) (*File, error) {
	r, err := img.record(id)
	if err != nil {
		return nil, err
	}
	f := &File{Name: name, ID: id, img: img, rec: r, ReparseTag: r.reparseTag}
	f.Attributes = flagsToAttrs(r.flags)
	if r.data.typ == streamLinkTable {
		f.Attributes |= AttrDirectory
	} else {
		f.Size = r.data.length
	}
	if r.reparse != 0 {
		f.Attributes |= AttrReparsePoint
	}
	f.CreationTime = filetimeToTime(r.times[0])
	f.LastWriteTime = filetimeToTime(r.times[1])
	f.ChangeTime = filetimeToTime(r.times[2])
	f.LastAccessTime = filetimeToTime(r.times[3])
	return f, nil
}

// IsDir reports whether f is a directory.
func (f *File) IsDir() bool { return f.rec.data.typ == streamLinkTable }

// SecurityDescriptor returns the self-relative security descriptor, or nil.
func (f *File) SecurityDescriptor() ([]byte, error) {
	if f.rec.sd == 0 {
		return nil, nil
	}
	return f.img.readPrefixed(f.rec.sd, 2, false, fmt.Sprintf("security descriptor of FileID %d", f.ID))
}

// EAs returns the extended attributes as a FILE_FULL_EA_INFORMATION chain, or nil.
func (f *File) EAs() ([]byte, error) {
	if f.rec.ea == 0 || f.rec.eaLength == 0 {
		return nil, nil
	}
	return f.img.read(f.rec.ea, int64(f.rec.eaLength), fmt.Sprintf("EAs of FileID %d", f.ID))
}

// ReparseData returns the whole REPARSE_DATA_BUFFER, or nil.
func (f *File) ReparseData() ([]byte, error) {
	if f.rec.reparse == 0 {
		return nil, nil
	}
	return f.img.readPrefixed(f.rec.reparse, 2, false, fmt.Sprintf("reparse data of FileID %d", f.ID))
}

// Links returns the file's names as (parent FileID, name) pairs, read from
// the 3.0 back-link table; 2.x images have none and return nil.
func (f *File) Links() ([]Link, error) {
	if f.rec.backLinks == 0 {
		return nil, nil
	}
	b, err := f.img.readPrefixed(f.rec.backLinks, 4, true, fmt.Sprintf("back links of FileID %d", f.ID))
	if err != nil {
		return nil, err
	}
	es, err := decodeLinkTable(b, 4)
	if err != nil {
		return nil, fmt.Errorf("%s: back links of FileID %d at %s: %w", f.img.path, f.ID, f.rec.backLinks, err)
	}
	out := make([]Link, len(es))
	for i, e := range es {
		out[i] = Link{Parent: binary.LittleEndian.Uint32(e.value), Name: decodeName(e.name)}
	}
	return out, nil
}

// Link is one name of a file: its directory's FileID and its name there.
type Link struct {
	Parent uint32 `json:"parent"`
	Name   string `json:"name"`
}

// StreamInfo describes an alternate data stream.
type StreamInfo struct {
	Name string
	Size int64
	s    stream
}

// Streams lists the alternate data streams.
func (f *File) Streams() ([]StreamInfo, error) {
	if f.rec.streamTable == 0 {
		return nil, nil
	}
	b, err := f.img.readPrefixed(f.rec.streamTable, 4, true, fmt.Sprintf("stream table of FileID %d", f.ID))
	if err != nil {
		return nil, err
	}
	es, err := decodeLinkTable(b, 16)
	if err != nil {
		return nil, fmt.Errorf("%s: stream table of FileID %d at %s: %w", f.img.path, f.ID, f.rec.streamTable, err)
	}
	out := make([]StreamInfo, len(es))
	for i, e := range es {
		s := getStream(e.value)
		out[i] = StreamInfo{Name: decodeName(e.name), Size: s.length, s: s}
	}
	return out, nil
}

// Open returns the file's content.
func (f *File) Open() (*io.SectionReader, error) {
	if f.IsDir() {
		return nil, fmt.Errorf("%s: FileID %d is a directory", f.img.path, f.ID)
	}
	return f.img.openStream(f.rec.data, fmt.Sprintf("data of FileID %d", f.ID))
}

// OpenStream returns the content of the alternate stream called name.
func (f *File) OpenStream(name string) (*io.SectionReader, error) {
	ss, err := f.Streams()
	if err != nil {
		return nil, err
	}
	for _, s := range ss {
		if strings.EqualFold(s.Name, name) {
			return f.img.openStream(s.s, fmt.Sprintf("stream %q of FileID %d", name, f.ID))
		}
	}
	return nil, fmt.Errorf("%s: FileID %d has no stream %q: %w", f.img.path, f.ID, name, fs.ErrNotExist)
}

func (img *Image) openStream(s stream, what string) (*io.SectionReader, error) {
	switch {
	case s.sparse || s.length == 0:
		return io.NewSectionReader(zeros{}, 0, s.length), nil
	case s.typ == streamData:
		if err := img.check(s.ro, s.length, what); err != nil {
			return nil, err
		}
		rf := img.regions[s.ro.index()]
		return io.NewSectionReader(rf.r, s.ro.offset(), s.length), nil
	case s.typ == streamPeImage:
		pe, err := img.openPE(s, what)
		if err != nil {
			return nil, err
		}
		return io.NewSectionReader(pe, 0, s.length), nil
	}
	return nil, fmt.Errorf("%w: %s: %s has stream type %d", ErrCorrupt, img.path, what, s.typ)
}

type zeros struct{}

func (zeros) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

// Stat returns the file at p ("a/b" or `a\b`, case-insensitive).
func (img *Image) Stat(p string) (*File, error) {
	parts, err := splitPath(p)
	if err != nil {
		return nil, err
	}
	f, err := img.file(img.root, "")
	if err != nil {
		return nil, err
	}
	for i, name := range parts {
		if f, err = img.lookup(f, name); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", img.path, path.Join(parts[:i+1]...), err)
		}
	}
	return f, nil
}

func (img *Image) lookup(dir *File, name string) (*File, error) {
	if !dir.IsDir() {
		return nil, fmt.Errorf("parent is not a directory: %w", fs.ErrNotExist)
	}
	up, err := img.upcase()
	if err != nil {
		return nil, err
	}
	t, err := img.dirTable(dir)
	if err != nil {
		return nil, err
	}
	want := encodeName(name)
	i := sort.Search(t.n, func(i int) bool { return compareNames(up, t.entry(i).name, want) >= 0 })
	if i == t.n {
		return nil, fs.ErrNotExist
	}
	e := t.entry(i)
	if compareNames(up, e.name, want) != 0 {
		return nil, fs.ErrNotExist
	}
	return img.file(binary.LittleEndian.Uint32(e.value), decodeName(e.name))
}

// dirTable reads and checks the link table of directory dir.
func (img *Image) dirTable(dir *File) (linkTable, error) {
	s := dir.rec.data
	if s.length == 0 {
		return linkTable{}, nil
	}
	b, err := img.read(s.ro, s.length, fmt.Sprintf("directory FileID %d", dir.ID))
	if err != nil {
		return linkTable{}, err
	}
	t, err := parseLinkTable(b, 4)
	if err != nil {
		return linkTable{}, fmt.Errorf("%s: directory FileID %d at %s: %w", img.path, dir.ID, s.ro, err)
	}
	return t, nil
}

// ReadDir lists the directory at p in its on-disk (upcased name) order.
func (img *Image) ReadDir(p string) ([]*File, error) {
	d, err := img.Stat(p)
	if err != nil {
		return nil, err
	}
	return img.readDir(d)
}

func (img *Image) readDir(d *File) ([]*File, error) {
	if !d.IsDir() {
		return nil, fmt.Errorf("%s: FileID %d (%s) is not a directory", img.path, d.ID, d.Name)
	}
	t, err := img.dirTable(d)
	if err != nil {
		return nil, err
	}
	out := make([]*File, 0, t.n)
	for i := range t.n {
		e := t.entry(i)
		f, err := img.file(binary.LittleEndian.Uint32(e.value), decodeName(e.name))
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// Open returns the content of the file at p.
func (img *Image) Open(p string) (*io.SectionReader, error) {
	f, err := img.Stat(p)
	if err != nil {
		return nil, err
	}
	return f.Open()
}

// Walk calls fn for every name in the tree, parents before children, with
// slash paths ("" for the root). A directory reached twice (a loop, or a
// hard-linked directory) is an error. It holds the table and path of each
// directory from the root to where it is, and no more: entries are decoded
// one at a time.
func (img *Image) Walk(fn func(p string, f *File) error) error {
	root, err := img.file(img.root, "")
	if err != nil {
		return err
	}
	seen := map[uint32]bool{}
	var held int64
	var walk func(p string, depth int, f *File) error
	walk = func(p string, depth int, f *File) error {
		if err := fn(p, f); err != nil {
			return err
		}
		if !f.IsDir() {
			return nil
		}
		if seen[f.ID] {
			return fmt.Errorf("%w: %s: directory FileID %d reached twice (at %q)", ErrCorrupt, img.path, f.ID, p)
		}
		seen[f.ID] = true
		t, err := img.dirTable(f)
		if err != nil {
			return err
		}
		if depth >= maxWalkDepth {
			return fmt.Errorf("%w: %s: directory FileID %d is %d levels deep, deeper than a Windows path can go",
				ErrCorrupt, img.path, f.ID, depth)
		}
		cost := int64(len(t.b) + len(p))
		if held += cost; held > maxWalkHeld {
			return fmt.Errorf("%w: %s: the directory tables and paths from the root to FileID %d hold %d bytes, over the limit of %d",
				ErrCorrupt, img.path, f.ID, held, maxWalkHeld)
		}
		defer func() { held -= cost }()
		for i := range t.n {
			e := t.entry(i)
			k, err := img.file(binary.LittleEndian.Uint32(e.value), decodeName(e.name))
			if err != nil {
				return err
			}
			if err := walk(path.Join(p, k.Name), depth+1, k); err != nil {
				return err
			}
		}
		return nil
	}
	return walk("", 0, root)
}
