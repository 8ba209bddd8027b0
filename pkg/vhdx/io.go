package vhdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/layervisor/layervisor/internal/diskio"
	"github.com/layervisor/layervisor/internal/zero"
)

// ErrReadOnly is returned by writes to a disk opened read-only.
var ErrReadOnly = errors.New("disk is open read-only")

// defaultGrowStep is the least the file grows by when blocks are
// allocated; it grows by its own length up to maxGrowStep beyond that, so
// filling a disk costs a logarithmic number of truncate + fsync pairs. The
// reserve is a hole: it takes no space, and Close gives it back.
const (
	defaultGrowStep = 64 * mib
	maxGrowStep     = 1 << 30
)

// ReadAt reads the virtual disk. Reads at or past the end return io.EOF.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	return diskio.ReadAt("vhdx: "+d.name, d.size, p, off, func(p []byte, off int64) (int, error) {
		d.mu.RLock()
		err := d.readAt(p, off)
		d.mu.RUnlock()
		if err != nil {
			return 0, fmt.Errorf("vhdx: %s: read at %d: %w", d.name, off, err)
		}
		return len(p), nil
	})
}

// readAt reads p at off (inside the disk) block by block; d.mu is held.
func (d *Disk) readAt(p []byte, off int64) error {
	for len(p) > 0 {
		block, in := off/d.blockSize, off%d.blockSize
		n := min(int64(len(p)), d.blockSize-in)
		if err := d.readBlock(p[:n], block, in); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

func (d *Disk) readBlock(p []byte, block, in int64) error {
	e := d.bat[d.payloadIndex(block)]
	switch batState(e) {
	case blockFullyPresent:
		return d.readFile(p, batOffset(e)+in)
	case blockPartiallyPresent:
		return d.readPartial(p, block, in, batOffset(e))
	case blockNotPresent:
		if d.hasParent {
			return d.readParent(p, block*d.blockSize+in)
		}
	}
	clear(p) // zero, unmapped, undefined, or absent without parent
	return nil
}

func (d *Disk) readFile(p []byte, off int64) error {
	n, err := d.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == io.EOF {
		return corrupt("block data at %d is past the end of the file", off)
	}
	return err
}

func (d *Disk) readParent(p []byte, off int64) error {
	if d.parent == nil {
		return fmt.Errorf("sector at %d is in the parent, which is not open", off)
	}
	d.parent.mu.RLock()
	defer d.parent.mu.RUnlock()
	return d.parent.readAt(p, off)
}

// readPartial reads a partially present block run by run: sectors whose
// bitmap bit is set come from this file, the others from the parent.
func (d *Disk) readPartial(p []byte, block, in, fileOff int64) error {
	bm, err := d.bitmap(block / d.chunkRatio)
	if err != nil {
		return err
	}
	first := (block % d.chunkRatio) * (d.blockSize / d.logicalSector)
	for len(p) > 0 {
		sec := in / d.logicalSector
		present := bitSet(bm, first+sec)
		// Extend the run while sectors keep the same state.
		end := (sec + 1) * d.logicalSector
		for end < in+int64(len(p)) && bitSet(bm, first+end/d.logicalSector) == present {
			end += d.logicalSector
		}
		n := min(end-in, int64(len(p)))
		var err error
		if present {
			err = d.readFile(p[:n], fileOff+in)
		} else {
			err = d.readParent(p[:n], block*d.blockSize+in)
		}
		if err != nil {
			return err
		}
		p, in = p[n:], in+n
	}
	return nil
}

func bitSet(bm []byte, i int64) bool { return bm[i/8]&(1<<(i%8)) != 0 }

// bitmap returns chunk's sector bitmap, loading it on first use; an absent
// bitmap is all zeros (nothing present).
func (d *Disk) bitmap(chunk int64) ([]byte, error) {
	d.bitmapMu.Lock()
	defer d.bitmapMu.Unlock()
	if bm, ok := d.bitmaps[chunk]; ok {
		return bm, nil
	}
	bm := make([]byte, mib)
	if e := d.bat[d.bitmapIndex(chunk)]; batState(e) == bitmapPresent {
		if err := d.readFile(bm, batOffset(e)); err != nil {
			return nil, fmt.Errorf("sector bitmap of chunk %d: %w", chunk, err)
		}
	}
	d.bitmaps[chunk] = bm
	return bm, nil
}

// WriteAt writes the virtual disk, allocating blocks (and sector bitmaps in
// differencing disks) as needed.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, fmt.Errorf("vhdx: %s: %w", d.name, ErrReadOnly)
	}
	if err := diskio.CheckWrite("vhdx: "+d.name, d.size, len(p), off); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.beginWrite(); err != nil {
		return 0, fmt.Errorf("vhdx: %s: %w", d.name, err)
	}
	buf, boff := p, off
	if d.hasParent {
		// Bitmaps track whole sectors: widen the write to sector bounds
		// with the current content of the edge sectors.
		var err error
		if buf, boff, err = d.sectorAlign(p, off); err != nil {
			return 0, fmt.Errorf("vhdx: %s: write at %d: %w", d.name, off, err)
		}
	}
	for len(buf) > 0 {
		block, in := boff/d.blockSize, boff%d.blockSize
		n := min(int64(len(buf)), d.blockSize-in)
		if err := d.writeBlock(buf[:n], block, in); err != nil {
			written := int(max(0, boff-off))
			return min(written, len(p)), fmt.Errorf("vhdx: %s: write at %d: %w", d.name, boff, err)
		}
		buf, boff = buf[n:], boff+n
	}
	if d.pending >= maxPending || len(d.pendingPayload) >= maxPending {
		if err := d.flushPending(); err != nil {
			return len(p), fmt.Errorf("vhdx: %s: flush metadata: %w", d.name, err)
		}
	}
	return len(p), nil
}

func (d *Disk) sectorAlign(p []byte, off int64) ([]byte, int64, error) {
	s := d.logicalSector
	start, end := off/s*s, alignUp(off+int64(len(p)), s)
	if start == off && end == off+int64(len(p)) {
		return p, off, nil
	}
	buf := make([]byte, end-start)
	if err := d.readAt(buf[:s], start); err != nil {
		return nil, 0, err
	}
	if err := d.readAt(buf[len(buf)-int(s):], end-s); err != nil {
		return nil, 0, err
	}
	copy(buf[off-start:], p)
	return buf, start, nil
}

func (d *Disk) writeBlock(p []byte, block, in int64) error {
	idx := d.payloadIndex(block)
	e := d.bat[idx]
	switch batState(e) {
	case blockFullyPresent:
		_, err := d.f.WriteAt(p, batOffset(e)+in)
		return err
	case blockPartiallyPresent:
		if _, err := d.f.WriteAt(p, batOffset(e)+in); err != nil {
			return err
		}
		return d.markPresent(block, in, int64(len(p)))
	}
	if !d.hasParent && zero.Is(p) {
		return nil // the block already reads as zeros
	}
	at, err := d.allocate(d.blockSize)
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, at+in); err != nil {
		return err
	}
	if !d.hasParent {
		// Data is written before the entry; if a power loss keeps the
		// entry but not the data, the block reads as zeros, as before.
		return d.setBAT(idx, batEntry(blockFullyPresent, at))
	}
	state := uint64(blockFullyPresent)
	if batState(e) == blockNotPresent {
		// The rest of the block still comes from the parent.
		state = blockPartiallyPresent
		if err := d.markPresent(block, in, int64(len(p))); err != nil {
			return err
		}
	}
	d.bat[idx] = batEntry(state, at)
	d.pendingPayload[idx] = true
	return nil
}

// markPresent sets the bitmap bits of the written sectors in memory,
// allocating the chunk's bitmap block if needed; flushPending writes them.
func (d *Disk) markPresent(block, in, n int64) error {
	chunk := block / d.chunkRatio
	bm, err := d.bitmap(chunk)
	if err != nil {
		return err
	}
	first := (block%d.chunkRatio)*(d.blockSize/d.logicalSector) + in/d.logicalSector
	last := first + n/d.logicalSector // exclusive
	changed := false
	for i := first; i < last && !changed; i++ {
		changed = !bitSet(bm, i)
	}
	if !changed {
		return nil
	}
	bidx := d.bitmapIndex(chunk)
	if batState(d.bat[bidx]) != bitmapPresent {
		at, err := d.allocate(mib)
		if err != nil {
			return err
		}
		d.bat[bidx] = batEntry(bitmapPresent, at)
		d.pendingBitmapBAT[bidx] = true
	}
	d.bitmapMu.Lock()
	for i := first; i < last; i++ {
		bm[i/8] |= 1 << (i % 8)
	}
	d.bitmapMu.Unlock()
	r, ok := d.dirtyBitmap[chunk]
	if !ok {
		r = [2]int64{first / 8, (last + 7) / 8}
	}
	d.dirtyBitmap[chunk] = [2]int64{min(r[0], first/8), max(r[1], (last+7)/8)}
	d.pending++
	return nil
}

// maxPending bounds how many differencing-disk metadata updates wait in
// memory before flushPending writes them.
const maxPending = 4096

// flushPending makes a differencing disk's deferred metadata durable in
// an order that keeps the file valid at every instant: the data first
// (flush), then sector bitmaps and the BAT entries of new bitmap blocks,
// flush, then the payload BAT entries that rely on them. Deferring turns a
// flush per first write of a sector into two flushes per batch.
func (d *Disk) flushPending() error {
	if len(d.dirtyBitmap) == 0 && len(d.pendingBitmapBAT) == 0 && len(d.pendingPayload) == 0 {
		return nil
	}
	if err := d.orderedSync(); err != nil {
		return err
	}
	for chunk, r := range d.dirtyBitmap {
		bm := d.bitmaps[chunk]
		if _, err := d.f.WriteAt(bm[r[0]:r[1]], batOffset(d.bat[d.bitmapIndex(chunk)])+r[0]); err != nil {
			return fmt.Errorf("sector bitmap of chunk %d: %w", chunk, err)
		}
	}
	for idx := range d.pendingBitmapBAT {
		if err := d.setBAT(idx, d.bat[idx]); err != nil {
			return err
		}
	}
	if len(d.pendingPayload) > 0 {
		if err := d.orderedSync(); err != nil {
			return err
		}
	}
	for idx := range d.pendingPayload {
		if err := d.setBAT(idx, d.bat[idx]); err != nil {
			return err
		}
	}
	clear(d.dirtyBitmap)
	clear(d.pendingBitmapBAT)
	clear(d.pendingPayload)
	d.pending = 0
	return nil
}

func (d *Disk) orderedSync() error {
	if !d.ordered {
		return nil
	}
	return d.f.Sync()
}

// allocate returns the file offset of n new bytes (a multiple of 1 MiB) at
// the end of the used space. The file length covering them is made durable
// before the caller can point a BAT entry at them.
func (d *Disk) allocate(n int64) (int64, error) {
	at := d.usedEnd
	if at+n > d.physEnd {
		grow := max(at+n, d.physEnd+max(d.growStep, min(d.physEnd, maxGrowStep)))
		if err := d.f.Truncate(grow); err != nil {
			return 0, fmt.Errorf("grow file to %d: %w", grow, err)
		}
		if err := d.orderedSync(); err != nil {
			return 0, err
		}
		d.physEnd = grow
	}
	d.usedEnd = at + n
	return at, nil
}

// setBAT writes one BAT entry: 8 bytes, which no crash can tear.
func (d *Disk) setBAT(idx int64, e uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], e)
	if _, err := d.f.WriteAt(b[:], d.batOff+idx*8); err != nil {
		return fmt.Errorf("BAT entry %d: %w", idx, err)
	}
	d.bat[idx] = e
	return nil
}

// beginWrite gives the file new file-write and data-write GUIDs before its
// first change in this session, as MS-VHDX requires: a differencing child
// made from the old content no longer links to it.
func (d *Disk) beginWrite() error {
	if d.began {
		return nil
	}
	h := d.hdr
	h.fileWriteGUID, h.dataWriteGUID = NewGUID(), NewGUID()
	if err := d.writeHeader(h); err != nil {
		return err
	}
	d.began = true
	return nil
}

// writeHeader writes h into the non-current slot first (it becomes current
// through its higher sequence number), then into the other slot, so one
// valid newest copy exists at every moment.
func (d *Disk) writeHeader(h header) error {
	offs := [2]int64{header1Offset, header2Offset}
	for i := 0; i < 2; i++ {
		slot := 1 - d.hdrSlot
		h.seq = d.hdr.seq + 1
		if _, err := d.f.WriteAt(h.encode(), offs[slot]); err != nil {
			return fmt.Errorf("write header %d: %w", slot+1, err)
		}
		if err := d.orderedSync(); err != nil {
			return err
		}
		d.hdr, d.hdrSlot = h, slot
	}
	return nil
}
