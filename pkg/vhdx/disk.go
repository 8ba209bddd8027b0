// Package vhdx reads, writes and creates VHDX virtual disks (MS-VHDX) in pure
// Go: dynamic, fixed and differencing disks of any legal block size with 512
// or 4096-byte logical sectors. [Create] makes a disk and [Open] (or
// [OpenFile]) opens one; an open [Disk] is an io.ReaderAt and io.WriterAt of
// its virtual size, whose reads of absent blocks return zeros or fall through
// to the parent chain. [Check] validates a file, [Disk.Resize] grows one,
// [Reidentify] gives a copy new identities.
//
// Consistency: the file on disk is a valid VHDX at every instant, whether the
// process dies or the machine loses power, without the VHDX log (layervisor
// never writes it; it orders its writes instead, see README.md). A power
// loss can lose writes not yet made durable, never turn them into garbage: a
// sector never reads as present without its data, a block that lost its data
// reads as it did before, and a differencing disk never loses its parent's
// content. [Disk.Sync] makes everything written so far durable; a
// differencing disk also makes its allocations durable in batches, at Sync,
// Close or every 4096 updates.
//
// A file with a non-empty log (left by Hyper-V or QEMU stopped mid-update) is
// replayed when opened for writing and refused, with a clear error
// ([ErrLogNeedsReplay]), when opened read-only.
package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// File is what a Disk is stored in; *os.File is one.
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (fs.FileInfo, error)
	Close() error
}

// ErrParentMismatch means a differencing disk's parent has been modified or
// replaced since the child was made: its data-write GUID differs from the
// child's parent_linkage.
var ErrParentMismatch = errors.New("parent's data-write GUID does not match the child's parent_linkage")

// ErrCorrupt wraps every structural problem found in a file.
var ErrCorrupt = errors.New("corrupt VHDX")

// OpenOptions tune Open.
type OpenOptions struct {
	ReadOnly bool
	// ParentPath overrides the parent locator of a differencing disk.
	ParentPath string
	// NoParent opens a differencing disk without its parent; reads of
	// sectors the child does not hold fail.
	NoParent bool
	// Unordered skips the flushes that order metadata after data. Only for
	// files nobody can see before they are complete (a conversion's temp
	// output); Close still flushes.
	Unordered bool
}

// Disk is an open VHDX file. It is safe for concurrent use.
type Disk struct {
	mu       sync.RWMutex
	f        File
	name     string
	readOnly bool
	ordered  bool
	ownsFile bool // opened by Open, so closed by Close

	hdr      header
	hdrSlot  int // 0 or 1: which header copy is current
	regions  []region
	batOff   int64
	batLen   int64
	metaOff  int64
	metaLen  int64
	meta     []metaEntry
	sizeItem int64 // file offset of the virtual-size item (for Resize)
	idItem   int64 // file offset of the page-83 disk id item

	size           int64
	blockSize      int64
	logicalSector  int64
	physicalSector int64
	leaveAlloc     bool
	hasParent      bool
	diskID         GUID
	locator        map[string]string
	creator        string

	parent     *Disk
	parentPath string
	bat        []uint64
	chunkRatio int64
	dataBlocks int64
	bitmapMu   sync.Mutex
	bitmaps    map[int64][]byte // sector bitmap blocks by chunk, loaded lazily
	// Differencing disks defer metadata writes (see flushPending).
	dirtyBitmap      map[int64][2]int64 // chunk → dirty byte range of its bitmap
	pendingBitmapBAT map[int64]bool
	pendingPayload   map[int64]bool
	pending          int
	usedEnd          int64 // end of the last used byte, 1 MiB aligned: where blocks are allocated
	physEnd          int64 // file length (≥ usedEnd while space is preallocated)
	growStep         int64
	began            bool // headers already carry this session's write GUIDs
	logReplayed      bool
}

// Open opens the VHDX file at path.
func Open(path string, opts OpenOptions) (*Disk, error) {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	d, err := OpenFile(f, path, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.ownsFile = true
	return d, nil
}

// OpenFile opens a VHDX stored in f; name is used in errors and to resolve
// a relative parent path. The caller keeps f: Close flushes it but leaves
// it open.
func OpenFile(f File, name string, opts OpenOptions) (*Disk, error) {
	d := &Disk{f: f, name: name, readOnly: opts.ReadOnly, ordered: !opts.Unordered, bitmaps: map[int64][]byte{}, growStep: defaultGrowStep,
		dirtyBitmap: map[int64][2]int64{}, pendingBitmapBAT: map[int64]bool{}, pendingPayload: map[int64]bool{}}
	if err := d.load(); err != nil {
		return nil, fmt.Errorf("vhdx: %s: %w", name, err)
	}
	if d.hasParent && !opts.NoParent {
		if err := d.openParent(opts.ParentPath); err != nil {
			return nil, fmt.Errorf("vhdx: %s: %w", name, err)
		}
	}
	return d, nil
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

func (d *Disk) readFull(b []byte, off int64) error {
	n, err := d.f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return corrupt("file ends inside the %d bytes at offset %d (truncated?)", len(b), off)
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(b), off, err)
}

func (d *Disk) load() error {
	st, err := d.f.Stat()
	if err != nil {
		return err
	}
	d.physEnd = st.Size()
	if d.physEnd < alignment {
		id := make([]byte, 8)
		if n, _ := d.f.ReadAt(id, 0); n == 8 && !bytes.Equal(id, sigFile) {
			return corrupt("no \"vhdxfile\" signature: not a VHDX")
		}
		return corrupt("file of %d bytes is too short for a VHDX", d.physEnd)
	}
	id := make([]byte, 520)
	if err := d.readFull(id, fileIDOffset); err != nil {
		return err
	}
	if !bytes.Equal(id[:8], sigFile) {
		return corrupt("no \"vhdxfile\" signature: not a VHDX")
	}
	d.creator = fromUTF16le(id[8:520])
	if err := d.loadHeaders(); err != nil {
		return err
	}
	if !d.hdr.logGUID.IsZero() {
		if err := d.handleLog(); err != nil {
			return err
		}
	}
	if err := d.loadRegions(); err != nil {
		return err
	}
	if err := d.loadMetadata(); err != nil {
		return err
	}
	return d.loadBAT()
}

func (d *Disk) loadHeaders() error {
	var hs [2]*header
	var errs [2]error
	for i, off := range []int64{header1Offset, header2Offset} {
		b := make([]byte, headerSize)
		if err := d.readFull(b, off); err != nil {
			return err
		}
		hs[i], errs[i] = decodeHeader(b)
	}
	switch {
	case hs[0] == nil && hs[1] == nil:
		return corrupt("both headers are invalid: at 64 KiB: %v; at 128 KiB: %v", errs[0], errs[1])
	case hs[1] == nil || (hs[0] != nil && hs[0].seq > hs[1].seq):
		d.hdr, d.hdrSlot = *hs[0], 0
	default:
		d.hdr, d.hdrSlot = *hs[1], 1
	}
	return nil
}

func (d *Disk) loadRegions() error {
	var rs []region
	var errs []error
	for _, off := range []int64{region1Offset, region2Offset} {
		b := make([]byte, regionTblSize)
		if err := d.readFull(b, off); err != nil {
			return err
		}
		r, err := decodeRegionTable(b)
		if err == nil {
			rs = r
			break
		}
		errs = append(errs, fmt.Errorf("region table at %d KiB: %w", off/kib, err))
	}
	if rs == nil {
		return corrupt("%v", errors.Join(errs...))
	}
	d.regions = rs
	seen := map[GUID]bool{}
	for _, r := range rs {
		if seen[r.guid] {
			return corrupt("region %s listed twice", r.guid)
		}
		seen[r.guid] = true
		switch r.guid {
		case regionBAT:
			d.batOff, d.batLen = r.offset, r.length
		case regionMetadata:
			d.metaOff, d.metaLen = r.offset, r.length
		default:
			if r.required {
				return corrupt("unknown required region %s", r.guid)
			}
		}
		if r.offset+r.length > d.physEnd {
			return corrupt("region %s at %d length %d ends past the end of the %d-byte file (truncated?)", r.guid, r.offset, r.length, d.physEnd)
		}
	}
	if d.batLen == 0 || d.metaLen < metaTableSize {
		return corrupt("region table lacks the BAT or metadata region")
	}
	spans := []span{{"log", int64(d.hdr.logOffset), int64(d.hdr.logLength)}}
	for _, r := range rs {
		spans = append(spans, span{"region " + r.guid.String(), r.offset, r.length})
	}
	if err := checkOverlaps(spans); err != nil {
		return err
	}
	d.usedEnd = 0
	for _, s := range spans {
		d.usedEnd = max(d.usedEnd, s.off+s.len)
	}
	return nil
}

type span struct {
	what     string
	off, len int64
}

// checkOverlaps reports the first two spans that share a byte, or a span
// inside the first MiB (headers and region tables).
func checkOverlaps(spans []span) error {
	sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	for i, s := range spans {
		if s.len == 0 {
			continue
		}
		if s.off < alignment {
			return corrupt("%s at %d overlaps the header area", s.what, s.off)
		}
		if i > 0 && spans[i-1].off+spans[i-1].len > s.off {
			return corrupt("%s at %d overlaps %s at %d (length %d)", s.what, s.off, spans[i-1].what, spans[i-1].off, spans[i-1].len)
		}
	}
	return nil
}

func (d *Disk) loadMetadata() error {
	tbl := make([]byte, metaTableSize)
	if err := d.readFull(tbl, d.metaOff); err != nil {
		return err
	}
	es, err := decodeMetaTable(tbl)
	if err != nil {
		return corrupt("%v", err)
	}
	d.meta = es
	items := map[GUID][]byte{}
	for _, e := range es {
		if _, dup := items[e.id]; dup {
			return corrupt("metadata item %s listed twice", e.id)
		}
		if e.length > 0 && (e.offset < metaTableSize || int64(e.offset)+int64(e.length) > d.metaLen) {
			return corrupt("metadata item %s at %d length %d lies outside the metadata region", e.id, e.offset, e.length)
		}
		if e.length > mib {
			return corrupt("metadata item %s is %d bytes, over 1 MiB", e.id, e.length)
		}
		known := e.id == metaFileParams || e.id == metaVirtualSize || e.id == metaPage83 ||
			e.id == metaLogicalSect || e.id == metaPhysicalSect || e.id == metaParentLoc
		if !known {
			if e.isRequired {
				return corrupt("unknown required metadata item %s", e.id)
			}
			continue
		}
		b := make([]byte, e.length)
		if err := d.readFull(b, d.metaOff+int64(e.offset)); err != nil {
			return err
		}
		items[e.id] = b
		switch e.id {
		case metaVirtualSize:
			d.sizeItem = d.metaOff + int64(e.offset)
		case metaPage83:
			d.idItem = d.metaOff + int64(e.offset)
		}
	}
	le := binary.LittleEndian
	need := func(id GUID, n int, what string) ([]byte, error) {
		b, ok := items[id]
		if !ok {
			return nil, corrupt("metadata lacks the %s item", what)
		}
		if len(b) < n {
			return nil, corrupt("metadata item %s is %d bytes, want %d", what, len(b), n)
		}
		return b, nil
	}
	b, err := need(metaFileParams, 8, "file parameters")
	if err != nil {
		return err
	}
	d.blockSize = int64(le.Uint32(b))
	flags := le.Uint32(b[4:])
	d.leaveAlloc, d.hasParent = flags&1 != 0, flags&2 != 0
	if d.blockSize < minBlockSize || d.blockSize > maxBlockSize || d.blockSize&(d.blockSize-1) != 0 {
		return corrupt("block size %d is not a power of two from 1 to 256 MiB", d.blockSize)
	}
	if b, err = need(metaLogicalSect, 4, "logical sector size"); err != nil {
		return err
	}
	d.logicalSector = int64(le.Uint32(b))
	if b, err = need(metaPhysicalSect, 4, "physical sector size"); err != nil {
		return err
	}
	d.physicalSector = int64(le.Uint32(b))
	for _, s := range []int64{d.logicalSector, d.physicalSector} {
		if s != 512 && s != 4096 {
			return corrupt("sector size %d, want 512 or 4096", s)
		}
	}
	if b, err = need(metaVirtualSize, 8, "virtual disk size"); err != nil {
		return err
	}
	d.size = int64(le.Uint64(b))
	if d.size <= 0 || d.size > MaxSize || d.size%d.logicalSector != 0 {
		return corrupt("virtual size %d is not a positive multiple of %d up to 64 TiB", d.size, d.logicalSector)
	}
	if b, err = need(metaPage83, 16, "page 83 disk id"); err != nil {
		return err
	}
	copy(d.diskID[:], b)
	if d.hasParent {
		b, ok := items[metaParentLoc]
		if !ok {
			return corrupt("differencing disk lacks a parent locator")
		}
		if d.locator, err = decodeLocator(b); err != nil {
			return corrupt("%v", err)
		}
		if _, ok := d.locator["parent_linkage"]; !ok {
			return corrupt("parent locator lacks parent_linkage")
		}
	}
	d.chunkRatio = (1 << 23) * d.logicalSector / d.blockSize
	d.dataBlocks = (d.size + d.blockSize - 1) / d.blockSize
	return nil
}

// batEntries is the number of BAT entries a disk of this shape needs.
func batEntries(dataBlocks, chunkRatio int64, hasParent bool) int64 {
	if hasParent {
		return (dataBlocks + chunkRatio - 1) / chunkRatio * (chunkRatio + 1)
	}
	return dataBlocks + (dataBlocks-1)/chunkRatio
}

func (d *Disk) payloadIndex(block int64) int64 { return block + block/d.chunkRatio }
func (d *Disk) bitmapIndex(chunk int64) int64 {
	return chunk*(d.chunkRatio+1) + d.chunkRatio
}

func (d *Disk) loadBAT() error {
	n := batEntries(d.dataBlocks, d.chunkRatio, d.hasParent)
	if n*8 > d.batLen {
		return corrupt("BAT region of %d bytes is too small for %d entries", d.batLen, n)
	}
	raw := make([]byte, n*8)
	if err := d.readFull(raw, d.batOff); err != nil {
		return err
	}
	d.bat = make([]uint64, n)
	var spans []span
	for i := range d.bat {
		e := binary.LittleEndian.Uint64(raw[8*i:])
		d.bat[i] = e
		isBitmap := int64(i)%(d.chunkRatio+1) == d.chunkRatio
		st, length := batState(e), d.blockSize
		switch {
		case isBitmap && !d.hasParent && st != bitmapNotPresent:
			return corrupt("BAT entry %d: sector bitmap state %d in a disk without parent", i, st)
		case isBitmap && st != bitmapNotPresent && st != bitmapPresent:
			return corrupt("BAT entry %d: bad sector bitmap state %d", i, st)
		case isBitmap:
			length = mib
		case st == 4 || st == 5 || (st == blockPartiallyPresent && !d.hasParent):
			return corrupt("BAT entry %d: bad payload block state %d", i, st)
		}
		present := st == blockFullyPresent || st == blockPartiallyPresent || (isBitmap && st == bitmapPresent)
		if !present {
			continue
		}
		off := batOffset(e)
		if off+length > d.physEnd {
			return corrupt("BAT entry %d points at %d, past the end of the %d-byte file", i, off, d.physEnd)
		}
		spans = append(spans, span{fmt.Sprintf("BAT entry %d", i), off, length})
		d.usedEnd = max(d.usedEnd, off+length)
	}
	spans = append(spans, span{"log", int64(d.hdr.logOffset), int64(d.hdr.logLength)})
	for _, r := range d.regions {
		spans = append(spans, span{"region " + r.guid.String(), r.offset, r.length})
	}
	if err := checkOverlaps(spans); err != nil {
		return err
	}
	for c := int64(0); d.hasParent && c*d.chunkRatio < d.dataBlocks; c++ {
		if batState(d.bat[d.bitmapIndex(c)]) == bitmapPresent {
			continue
		}
		for b := c * d.chunkRatio; b < min((c+1)*d.chunkRatio, d.dataBlocks); b++ {
			if batState(d.bat[d.payloadIndex(b)]) == blockPartiallyPresent {
				return corrupt("block %d is partially present but its sector bitmap is not", b)
			}
		}
	}
	d.usedEnd = alignUp(d.usedEnd, alignment)
	return nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// openParent resolves the parent locator (or override) and checks linkage.
func (d *Disk) openParent(override string) error {
	link, err := ParseGUID(d.locator["parent_linkage"])
	if err != nil {
		return corrupt("parent_linkage: %v", err)
	}
	var candidates []string
	if override != "" {
		candidates = []string{override}
	} else {
		for _, k := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
			if p := d.locator[k]; p != "" {
				candidates = append(candidates, localPath(p, filepath.Dir(d.name)))
			}
		}
	}
	if len(candidates) == 0 {
		return corrupt("parent locator names no path")
	}
	var tried []string
	for _, p := range candidates {
		if _, err := os.Stat(p); err != nil {
			tried = append(tried, p)
			continue
		}
		par, err := Open(p, OpenOptions{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if par.hdr.dataWriteGUID != link {
			par.Close()
			return fmt.Errorf("parent %s: %w (parent %s, linkage %s)", p, ErrParentMismatch, par.hdr.dataWriteGUID, link)
		}
		if par.size != d.size || par.logicalSector != d.logicalSector {
			par.Close()
			return corrupt("parent %s is %d bytes with %d-byte sectors, child %d bytes with %d-byte sectors", p, par.size, par.logicalSector, d.size, d.logicalSector)
		}
		d.parent, d.parentPath = par, p
		return nil
	}
	return fmt.Errorf("parent not found (tried %s): %w", strings.Join(tried, ", "), fs.ErrNotExist)
}

// localPath turns a locator path (Windows separators, maybe relative to the
// child's directory) into a path for this OS.
func localPath(p, dir string) string {
	if filepath.Separator == '/' {
		p = strings.ReplaceAll(p, `\`, "/")
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return p
}

// Size is the virtual size in bytes.
func (d *Disk) Size() int64 { return d.size }

// BlockSize is the payload block size in bytes.
func (d *Disk) BlockSize() int64 { return d.blockSize }

// LogicalSectorSize is 512 or 4096.
func (d *Disk) LogicalSectorSize() int64 { return d.logicalSector }

// Parent is the open parent of a differencing disk, or nil.
func (d *Disk) Parent() *Disk { return d.parent }

// DataWriteGUID identifies the disk's current content; a child links to it.
func (d *Disk) DataWriteGUID() GUID {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.hdr.dataWriteGUID
}

// Close flushes, drops preallocated space past the last block and closes
// the file and the parent chain.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if !d.readOnly && d.f != nil {
		if err := d.flushPending(); err != nil {
			errs = append(errs, err)
		}
		if d.physEnd > d.usedEnd {
			if err := d.f.Truncate(d.usedEnd); err != nil {
				errs = append(errs, err)
			} else {
				d.physEnd = d.usedEnd
			}
		}
		if err := d.f.Sync(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.parent != nil {
		errs = append(errs, d.parent.Close())
	}
	if d.f != nil && d.ownsFile {
		errs = append(errs, d.f.Close())
	}
	d.f = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vhdx: close %s: %w", d.name, err)
	}
	return nil
}

// Sync makes everything written so far durable.
func (d *Disk) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.readOnly {
		return nil
	}
	err := d.flushPending()
	if err == nil {
		err = d.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("vhdx: sync %s: %w", d.name, err)
	}
	return nil
}
