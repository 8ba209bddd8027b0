package vhdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/utf16le"
)

// Type is the kind of VHDX.
type Type string

const (
	Dynamic      Type = "dynamic"      // blocks allocated on first write
	Fixed        Type = "fixed"        // every block allocated at creation
	Differencing Type = "differencing" // absent blocks read from a parent
)

// CreateOptions describe a new disk.
type CreateOptions struct {
	Size               int64 // virtual size; a differencing disk takes its parent's
	Type               Type  // default Dynamic, or Differencing when Parent is set
	BlockSize          int64 // default 1 MiB; a power of two from 1 to 256 MiB
	LogicalSectorSize  int64 // 512 (default) or 4096
	PhysicalSectorSize int64 // 512 or 4096 (default)
	Parent             string
	// Unordered: see OpenOptions.
	Unordered bool
}

// Creator is what layervisor writes in the file identifier.
const Creator = "layervisor"

// Create makes a new VHDX at path and returns it open for writing. The file
// appears whole or not at all; an existing path is an error.
func Create(path string, o CreateOptions) (*Disk, error) {
	if err := atomicfile.Create(path, 0o600, func(f *os.File) error { return Format(f, path, o) }); err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	d, err := Open(path, OpenOptions{ParentPath: o.Parent, Unordered: o.Unordered})
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return d, nil
}

// Format writes a new, empty VHDX into the empty file f, which is to live
// at path: a differencing disk records its parent relative to that path.
func Format(f *os.File, path string, o CreateOptions) error {
	if o.Type == "" {
		o.Type = Dynamic
		if o.Parent != "" {
			o.Type = Differencing
		}
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.LogicalSectorSize == 0 {
		o.LogicalSectorSize = 512
	}
	if o.PhysicalSectorSize == 0 {
		o.PhysicalSectorSize = 4096
	}
	var locator []byte
	switch {
	case o.Type == Differencing && o.Parent == "":
		return errors.New("a differencing disk needs a parent")
	case o.Type == Differencing:
		parent, err := Open(o.Parent, OpenOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer parent.Close()
		if o.Size != 0 && o.Size != parent.size {
			return fmt.Errorf("size %d differs from the parent's %d", o.Size, parent.size)
		}
		o.Size, o.LogicalSectorSize = parent.size, parent.logicalSector
		if locator, err = parentLocator(path, o.Parent, parent.hdr.dataWriteGUID); err != nil {
			return err
		}
	case o.Parent != "":
		return fmt.Errorf("a %s disk has no parent", o.Type)
	}
	if err := o.validate(); err != nil {
		return err
	}
	return writeNew(f, o, locator)
}

func (o *CreateOptions) validate() error {
	switch o.Type {
	case Dynamic, Fixed, Differencing:
	default:
		return fmt.Errorf("unknown disk type %q (want dynamic, fixed or differencing)", o.Type)
	}
	if o.BlockSize < minBlockSize || o.BlockSize > maxBlockSize || o.BlockSize&(o.BlockSize-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two from 1 MiB to 256 MiB", o.BlockSize)
	}
	for _, s := range []int64{o.LogicalSectorSize, o.PhysicalSectorSize} {
		if s != 512 && s != 4096 {
			return fmt.Errorf("sector size %d: want 512 or 4096", s)
		}
	}
	if o.Size <= 0 || o.Size > MaxSize || o.Size%o.LogicalSectorSize != 0 {
		return fmt.Errorf("size %d is not a positive multiple of %d up to 64 TiB", o.Size, o.LogicalSectorSize)
	}
	return nil
}

// parentLocator records the parent's data-write GUID and its path relative
// to the child (Windows separators, so Windows resolves it too) and absolute.
func parentLocator(child, parent string, link GUID) ([]byte, error) {
	absChild, err := filepath.Abs(child)
	if err != nil {
		return nil, err
	}
	absParent, err := filepath.Abs(parent)
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(filepath.Dir(absChild), absParent)
	if err != nil {
		return nil, err
	}
	rel = strings.ReplaceAll(rel, "/", `\`)
	if !strings.HasPrefix(rel, "..") {
		rel = `.\` + rel
	}
	return encodeLocator([][2]string{
		{"parent_linkage", "{" + link.String() + "}"},
		{"relative_path", rel},
		{"absolute_win32_path", absParent},
	}), nil
}

// writeNew lays out a new file: identifier, two headers, two region tables,
// a 1 MiB log (empty), the metadata region, the BAT, then (fixed disks)
// every payload block.
func writeNew(f *os.File, o CreateOptions, locator []byte) error {
	const logOff, logLen, metaOff, metaLen = 1 * mib, 1 * mib, 2 * mib, 1 * mib
	hasParent := o.Type == Differencing
	dataBlocks := (o.Size + o.BlockSize - 1) / o.BlockSize
	ratio := (1 << 23) * o.LogicalSectorSize / o.BlockSize
	entries := batEntries(dataBlocks, ratio, hasParent)
	batOff, batLen := int64(metaOff+metaLen), alignUp(entries*8, mib)
	end := batOff + batLen

	le := binary.LittleEndian
	id := make([]byte, 64*kib)
	copy(id, sigFile)
	copy(id[8:], utf16le.Encode(Creator))
	h := header{fileWriteGUID: NewGUID(), dataWriteGUID: NewGUID(), version: 1, logLength: logLen, logOffset: logOff}
	h.seq = 1
	h1 := h.encode()
	h.seq = 2
	h2 := h.encode()
	rt := encodeRegionTable([]region{
		{guid: regionBAT, offset: batOff, length: batLen, required: true},
		{guid: regionMetadata, offset: metaOff, length: metaLen, required: true},
	})

	// Metadata items, packed after the 64 KiB table.
	var items []byte
	var es []metaEntry
	add := func(id GUID, data []byte, virtualDisk bool) {
		es = append(es, metaEntry{id: id, offset: uint32(metaTableSize + len(items)), length: uint32(len(data)), isVirtualDisk: virtualDisk, isRequired: true})
		items = append(items, data...)
	}
	fp := make([]byte, 8)
	le.PutUint32(fp, uint32(o.BlockSize))
	if o.Type == Fixed {
		le.PutUint32(fp[4:], 1) // leave blocks allocated
	}
	if hasParent {
		le.PutUint32(fp[4:], 2)
	}
	add(metaFileParams, fp, false)
	add(metaVirtualSize, le.AppendUint64(nil, uint64(o.Size)), true)
	add(metaLogicalSect, le.AppendUint32(nil, uint32(o.LogicalSectorSize)), true)
	add(metaPhysicalSect, le.AppendUint32(nil, uint32(o.PhysicalSectorSize)), true)
	diskID := NewGUID()
	add(metaPage83, diskID[:], true)
	if hasParent {
		add(metaParentLoc, locator, false)
	}
	if metaTableSize+len(items) > metaLen {
		return errors.New("parent locator does not fit in the metadata region (path too long)")
	}

	bat := make([]byte, entries*8)
	if o.Type == Fixed {
		for b := int64(0); b < dataBlocks; b++ {
			le.PutUint64(bat[8*(b+b/ratio):], batEntry(blockFullyPresent, end))
			end += o.BlockSize
		}
	}
	for _, w := range []struct {
		b   []byte
		off int64
	}{
		{id, fileIDOffset}, {h1, header1Offset}, {h2, header2Offset},
		{rt, region1Offset}, {rt, region2Offset},
		{encodeMetaTable(es), metaOff}, {items, metaOff + metaTableSize}, {bat, batOff},
	} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return err
		}
	}
	// The log, metadata padding, BAT tail and fixed blocks are holes: zeros.
	return f.Truncate(end)
}
