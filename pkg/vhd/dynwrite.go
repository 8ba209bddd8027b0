package vhd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/diskio"
	"github.com/layervisor/layervisor/internal/zero"
)

// DefaultBlockSize is the block size of new dynamic VHDs, the one Windows
// and QEMU create.
const DefaultBlockSize = 2 << 20

// MaxDynamicSize is the largest virtual size of a dynamic VHD: 2040 GiB,
// the limit of Windows and QEMU. (A BAT entry's 32-bit sector offset caps
// the file at 2 TiB, which the blocks and their bitmaps must fit in.)
const MaxDynamicSize = 0xff000000 * 512

const minDynamicBlock = 512 << 10

// ErrReadOnly is returned by writes to a VHD opened read-only.
var ErrReadOnly = errors.New("VHD is open read-only")

// DynamicOptions describe a new dynamic VHD.
type DynamicOptions struct {
	// BlockSize is a power of two from 512 KiB to 256 MiB; 0 means
	// DefaultBlockSize. The specification allows any; QEMU and libvhdi
	// read any; 2 MiB is what Windows writes, so the safe choice for it.
	BlockSize int64
	// Unordered skips the flush that makes a new block durable before its
	// BAT entry. Only for files nobody sees before they are complete (a
	// conversion's temp output); Close still flushes.
	Unordered bool
}

// CreateDynamic makes a new, empty dynamic VHD of size bytes (a multiple of
// 512 up to MaxDynamicSize) at path and returns it open for writing. The
// file appears whole or not at all; an existing path is an error.
func CreateDynamic(path string, size int64, o DynamicOptions) (*Dynamic, error) {
	if err := atomicfile.Create(path, 0o600, func(f *os.File) error { return formatDynamic(f, size, o) }); err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	d, err := openDynamic(path, os.O_RDWR, !o.Unordered)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return d, nil
}

// FormatDynamic writes an empty dynamic VHD of size bytes into f, an empty
// file that errors call name, and returns it open for writing. Close
// flushes but leaves f open, for callers such as atomicfile.Create that
// close it themselves.
func FormatDynamic(f *os.File, name string, size int64, o DynamicOptions) (*Dynamic, error) {
	if err := formatDynamic(f, size, o); err != nil {
		return nil, fmt.Errorf("vhd: %s: %w", name, err)
	}
	d, err := readDynamic(f, name)
	if err != nil {
		return nil, fmt.Errorf("vhd: %s: %w", name, err)
	}
	d.writable, d.ordered = true, !o.Unordered
	return d, nil
}

// formatDynamic writes the footer copy, the header, a BAT of unused
// entries (padded to whole sectors with more of them, as QEMU pads) and
// the footer.
func formatDynamic(f storage, size int64, o DynamicOptions) error {
	bs := o.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < minDynamicBlock || bs > maxDynamicBlock || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two from 512 KiB to 256 MiB", bs)
	}
	if size <= 0 || size%512 != 0 || size > MaxDynamicSize {
		return fmt.Errorf("size %d is not a positive multiple of 512 up to 2040 GiB (the VHD limit)", size)
	}
	return writeEmpty(f, size, bs)
}

func writeEmpty(f storage, size, bs int64) error {
	ft, err := newFooter(size, DiskTypeDynamic, FooterSize)
	if err != nil {
		return err
	}
	footer, _ := ft.MarshalBinary()
	entries := (size + bs - 1) / bs
	tableOff := int64(FooterSize + dynHeaderSize)
	batLen := alignUp(4*entries, 512)

	h := make([]byte, dynHeaderSize)
	be := binary.BigEndian
	copy(h, dynCookie)
	be.PutUint64(h[8:], ^uint64(0)) // next structure: none
	be.PutUint64(h[16:], uint64(tableOff))
	be.PutUint32(h[24:], dynVersion)
	be.PutUint32(h[28:], uint32(entries))
	be.PutUint32(h[32:], uint32(bs))
	be.PutUint32(h[36:], checksumAt(h, 36))

	b := make([]byte, tableOff+batLen+FooterSize)
	copy(b, footer)
	copy(b[FooterSize:], h)
	copy(b[tableOff:], bytes.Repeat([]byte{0xFF}, int(batLen)))
	copy(b[tableOff+batLen:], footer)
	_, err = f.WriteAt(b, 0)
	return err
}

// WriteAt writes the virtual disk, allocating blocks on their first
// non-zero write; zeros written to an unallocated block leave it so.
func (d *Dynamic) WriteAt(p []byte, off int64) (int, error) {
	if !d.writable {
		return 0, fmt.Errorf("vhd: %s: %w", d.name, ErrReadOnly)
	}
	if err := diskio.CheckWrite("vhd: "+d.name, d.size, len(p), off); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.tailOK && len(p) > 0 {
		if err := d.placeFooter(); err != nil {
			return 0, fmt.Errorf("vhd: %s: %w", d.name, err)
		}
	}
	for n := 0; n < len(p); {
		at := off + int64(n)
		block, in := at/d.blockSize, at%d.blockSize
		c := int(min(int64(len(p)-n), d.blockSize-in))
		if err := d.writeBlock(p[n:n+c], block, in); err != nil {
			return n, fmt.Errorf("vhd: %s: write at %d: %w", d.name, at, err)
		}
		n += c
	}
	return len(p), nil
}

func (d *Dynamic) writeBlock(p []byte, block, in int64) error {
	if e := d.bat[block]; e != unusedBATEntry {
		_, err := d.f.WriteAt(p, int64(e)*512+d.bitmapLen+in)
		return err
	}
	if zero.Is(p) {
		return nil // the block already reads as zeros
	}
	return d.allocate(p, block, in)
}

// placeFooter puts the footer right after the used space and cuts the
// file there, dropping space a crash left unreferenced (and any footer
// another writer left inside a block). Writing before cutting keeps the
// old footer last until the new one is.
func (d *Dynamic) placeFooter() error {
	if _, err := d.f.WriteAt(d.footer, d.end); err != nil {
		return fmt.Errorf("write footer: %w", err)
	}
	if err := d.f.Truncate(d.end + FooterSize); err != nil {
		return fmt.Errorf("cut the file after the footer: %w", err)
	}
	d.tailOK = true
	return nil
}

// allocate gives block a place where the footer is now and writes p at in,
// in the order the package comment explains.
func (d *Dynamic) allocate(p []byte, block, in int64) error {
	at := d.end
	next := at + d.bitmapLen + d.blockSize
	if at/512 >= unusedBATEntry {
		return errors.New("the file is full: a BAT entry cannot address past 2 TiB")
	}
	// 1. The footer moves past the block; the block's data area is a hole.
	if _, err := d.f.WriteAt(d.footer, next); err != nil {
		d.f.Truncate(at + FooterSize) // best effort: the old footer last again
		return fmt.Errorf("move the footer: %w", err)
	}
	d.end = next // from here a failure only leaks the space
	// 2. Every bitmap bit is set, as QEMU does for dynamic disks: the
	// specification's bitmap marks the sectors that hold data, and all of
	// a new block's sectors do (those not written hold the hole's zeros).
	// Readers that honour the bitmap (libvhdi) and readers that ignore it
	// (QEMU, this package) then agree, and later writes leave it alone.
	if _, err := d.f.WriteAt(bytes.Repeat([]byte{0xFF}, int(d.bitmapLen)), at); err != nil {
		return fmt.Errorf("sector bitmap: %w", err)
	}
	if _, err := d.f.WriteAt(p, at+d.bitmapLen+in); err != nil {
		return err
	}
	// 3. All of it durable before anything points at it.
	if d.ordered {
		if err := d.f.Sync(); err != nil {
			return err
		}
	}
	// 4. The entry makes the block visible.
	var e [4]byte
	binary.BigEndian.PutUint32(e[:], uint32(at/512))
	if _, err := d.f.WriteAt(e[:], d.batOff+4*block); err != nil {
		return fmt.Errorf("BAT entry %d: %w", block, err)
	}
	d.bat[block] = uint32(at / 512)
	return nil
}

// Sync makes everything written so far durable.
func (d *Dynamic) Sync() error {
	if !d.writable {
		return nil
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("vhd: sync %s: %w", d.name, err)
	}
	return nil
}

// Close flushes a disk opened for writing and closes the file (unless it
// came from the caller, as with FormatDynamic).
func (d *Dynamic) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.writable {
		errs = append(errs, d.f.Sync())
	}
	if d.ownsFile {
		errs = append(errs, d.f.Close())
	}
	d.writable, d.ownsFile = false, false // a second Close does nothing
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vhd: close %s: %w", d.name, err)
	}
	return nil
}
