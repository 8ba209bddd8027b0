package vhdx

import (
	"encoding/binary"
	"fmt"

	"github.com/layervisor/layervisor/internal/sparse"
)

// Info describes an open disk.
type Info struct {
	Type               Type              `json:"type"`
	VirtualSize        int64             `json:"virtualSize"`
	BlockSize          int64             `json:"blockSize"`
	LogicalSectorSize  int64             `json:"logicalSectorSize"`
	PhysicalSectorSize int64             `json:"physicalSectorSize"`
	FileSize           int64             `json:"fileSize"`
	Blocks             int64             `json:"blocks"`
	BlocksPresent      int64             `json:"blocksPresent"` // fully or partially present
	Creator            string            `json:"creator,omitempty"`
	DiskID             GUID              `json:"diskID"`
	FileWriteGUID      GUID              `json:"fileWriteGUID"`
	DataWriteGUID      GUID              `json:"dataWriteGUID"`
	ParentLinkage      string            `json:"parentLinkage,omitempty"`
	ParentLocator      map[string]string `json:"parentLocator,omitempty"`
	ParentPath         string            `json:"parentPath,omitempty"` // resolved, when open
	LogReplayed        bool              `json:"logReplayed,omitempty"`
}

// Info reports the disk's parameters and allocation.
func (d *Disk) Info() Info {
	d.mu.RLock()
	defer d.mu.RUnlock()
	in := Info{
		Type: Dynamic, VirtualSize: d.size, BlockSize: d.blockSize,
		LogicalSectorSize: d.logicalSector, PhysicalSectorSize: d.physicalSector,
		FileSize: d.physEnd, Blocks: d.dataBlocks, Creator: d.creator, DiskID: d.diskID,
		FileWriteGUID: d.hdr.fileWriteGUID, DataWriteGUID: d.hdr.dataWriteGUID,
		ParentPath: d.parentPath, LogReplayed: d.logReplayed,
	}
	switch {
	case d.hasParent:
		in.Type = Differencing
		in.ParentLinkage = d.locator["parent_linkage"]
		in.ParentLocator = d.locator
	case d.leaveAlloc:
		in.Type = Fixed
	}
	for b := int64(0); b < d.dataBlocks; b++ {
		if st := batState(d.bat[d.payloadIndex(b)]); st == blockFullyPresent || st == blockPartiallyPresent {
			in.BlocksPresent++
		}
	}
	return in
}

// Extent is a range of the virtual disk.
type Extent = sparse.Extent

// Allocated lists the ranges this file (not its parents) holds data for,
// merged where adjacent; everything else reads as zeros or from a parent.
func (d *Disk) Allocated() []Extent {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []Extent
	for b := int64(0); b < d.dataBlocks; b++ {
		st := batState(d.bat[d.payloadIndex(b)])
		if st != blockFullyPresent && st != blockPartiallyPresent {
			continue
		}
		off := b * d.blockSize
		l := min(d.blockSize, d.size-off)
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == off {
			out[n-1].Len += l
		} else {
			out = append(out, Extent{Off: off, Len: l})
		}
	}
	return out
}

// Resize grows the virtual size to size. The BAT grows in place when its
// region has room, else a larger copy is written past the used space and
// the region tables are switched to it (table 1, then table 2: one of them
// is valid at every moment); the size item changes last.
func (d *Disk) Resize(size int64) error {
	if d.readOnly {
		return fmt.Errorf("vhdx: %s: %w", d.name, ErrReadOnly)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case size == d.size:
		return nil
	case size < d.size:
		return fmt.Errorf("vhdx: %s: shrinking from %d to %d bytes is not supported", d.name, d.size, size)
	case size > MaxSize || size%d.logicalSector != 0:
		return fmt.Errorf("vhdx: %s: size %d is not a multiple of %d up to 64 TiB", d.name, size, d.logicalSector)
	case d.hasParent:
		return fmt.Errorf("vhdx: %s: a differencing disk keeps its parent's size", d.name)
	case d.sizeItem == 0:
		return fmt.Errorf("vhdx: %s: no virtual size item", d.name)
	}
	if err := d.beginWrite(); err != nil {
		return fmt.Errorf("vhdx: %s: %w", d.name, err)
	}
	if err := d.resize(size); err != nil {
		return fmt.Errorf("vhdx: %s: resize to %d: %w", d.name, size, err)
	}
	return nil
}

func (d *Disk) resize(size int64) error {
	blocks := (size + d.blockSize - 1) / d.blockSize
	n := batEntries(blocks, d.chunkRatio, false)
	bat := make([]uint64, n)
	copy(bat, d.bat)
	if d.leaveAlloc { // a fixed disk stays fully allocated
		for b := d.dataBlocks; b < blocks; b++ {
			at, err := d.allocate(d.blockSize)
			if err != nil {
				return err
			}
			bat[b+b/d.chunkRatio] = batEntry(blockFullyPresent, at)
		}
	}
	raw := make([]byte, 8*n)
	for i, e := range bat {
		binary.LittleEndian.PutUint64(raw[8*i:], e)
	}
	if n*8 <= d.batLen {
		tail := int64(len(d.bat)) * 8
		if _, err := d.f.WriteAt(raw[tail:], d.batOff+tail); err != nil {
			return err
		}
	} else {
		newLen := alignUp(n*8, mib)
		at, err := d.allocate(newLen)
		if err != nil {
			return err
		}
		if _, err := d.f.WriteAt(raw, at); err != nil {
			return err
		}
		if err := d.f.Sync(); err != nil {
			return err
		}
		for i := range d.regions {
			if d.regions[i].guid == regionBAT {
				d.regions[i].offset, d.regions[i].length = at, newLen
			}
		}
		rt := encodeRegionTable(d.regions)
		for _, off := range []int64{region1Offset, region2Offset} {
			if _, err := d.f.WriteAt(rt, off); err != nil {
				return err
			}
			if err := d.f.Sync(); err != nil {
				return err
			}
		}
		d.batOff, d.batLen = at, newLen
	}
	if err := d.f.Sync(); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(binary.LittleEndian.AppendUint64(nil, uint64(size)), d.sizeItem); err != nil {
		return err
	}
	d.bat, d.size, d.dataBlocks = bat, size, blocks
	return nil
}

// Reidentify gives a copied disk its own identity: a new page-83 disk id
// (guests tell disks apart by it) and new file- and data-write GUIDs. A
// byte-for-byte copy of a template is otherwise the same disk twice.
func Reidentify(path string) error {
	d, err := Open(path, OpenOptions{NoParent: true})
	if err != nil {
		return err
	}
	d.mu.Lock()
	err = d.beginWrite()
	if err == nil && d.idItem != 0 {
		id := NewGUID()
		if _, err = d.f.WriteAt(id[:], d.idItem); err == nil {
			d.diskID = id
		}
	}
	d.mu.Unlock()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vhdx: reidentify %s: %w", path, err)
	}
	return nil
}
