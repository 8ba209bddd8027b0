package vhd

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"

	"github.com/layervisor/layervisor/internal/diskio"
)

const (
	dynHeaderSize   = 1024
	dynCookie       = "cxsparse"
	dynVersion      = 0x00010000
	unusedBATEntry  = 0xFFFFFFFF
	maxDynamicBlock = 256 << 20
	maxBATEntries   = 1 << 24 // 2 TiB of 2 MiB blocks is 1M entries; leave room
)

// storage is the file under a Dynamic: an *os.File, or memory in tests.
type storage interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (fs.FileInfo, error)
	Close() error
}

// Dynamic is an open dynamic VHD: an io.ReaderAt of its virtual size, and an
// io.WriterAt when opened for writing. Unallocated blocks read as zeros. It
// is safe for concurrent use.
type Dynamic struct {
	mu        sync.RWMutex
	f         storage
	name      string
	Footer    *Footer
	size      int64
	blockSize int64
	bitmapLen int64 // sector bitmap before each block's data, in bytes
	batOff    int64
	bat       []uint32

	writable, ordered, ownsFile bool
	footer                      []byte // as read: written again after each new block
	end                         int64  // end of the used space, where the footer belongs
	tailOK                      bool   // the file ends with a valid footer at end
}

// OpenDynamic opens a dynamic VHD for reading. Differencing VHDs are refused.
func OpenDynamic(path string) (*Dynamic, error) {
	return openDynamic(path, os.O_RDONLY, false)
}

// OpenDynamicRW opens a dynamic VHD for reading and writing.
func OpenDynamicRW(path string) (*Dynamic, error) {
	return openDynamic(path, os.O_RDWR, true)
}

func openDynamic(path string, flag int, ordered bool) (*Dynamic, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	d, err := readDynamic(f, path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vhd: %s: %w", path, err)
	}
	d.writable, d.ordered, d.ownsFile = flag == os.O_RDWR, ordered, true
	return d, nil
}

func readDynamic(f storage, name string) (*Dynamic, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	footerAt := st.Size() - FooterSize
	ft, err := ReadFooter(f, st.Size())
	tailOK := err == nil
	if err != nil {
		// A dynamic VHD keeps a copy of the footer at offset 0.
		footerAt = 0
		ft, err = ReadFooter(io.NewSectionReader(f, 0, FooterSize), FooterSize)
		if err != nil {
			return nil, err
		}
	}
	switch ft.DiskType {
	case DiskTypeDynamic:
	case DiskTypeDifferencing:
		return nil, errors.New("differencing VHDs are not supported (VHDX differencing disks are)")
	default:
		return nil, fmt.Errorf("disk type %d is not dynamic", ft.DiskType)
	}
	if st.Size() < FooterSize+dynHeaderSize || ft.DataOffset > uint64(st.Size())-dynHeaderSize || ft.DataOffset < FooterSize {
		return nil, fmt.Errorf("dynamic header offset %d is outside the %d-byte file", ft.DataOffset, st.Size())
	}
	h := make([]byte, dynHeaderSize)
	if _, err := f.ReadAt(h, int64(ft.DataOffset)); err != nil {
		return nil, fmt.Errorf("read dynamic header: %w", err)
	}
	if !bytes.Equal(h[:8], []byte(dynCookie)) {
		return nil, fmt.Errorf("dynamic header at %d: cookie %q, want %q", ft.DataOffset, h[:8], dynCookie)
	}
	be := binary.BigEndian
	if sum, want := be.Uint32(h[36:]), checksumAt(h, 36); sum != want {
		return nil, fmt.Errorf("dynamic header checksum %#08x, computed %#08x", sum, want)
	}
	tableOff := be.Uint64(h[16:])
	entries := int64(be.Uint32(h[28:]))
	blockSize := int64(be.Uint32(h[32:]))
	if blockSize < 512 || blockSize > maxDynamicBlock || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("block size %d is not a power of two up to 256 MiB", blockSize)
	}
	size := int64(ft.CurrentSize)
	if size <= 0 || size%512 != 0 || ft.CurrentSize > 1<<62 {
		return nil, fmt.Errorf("virtual size %d is not a positive multiple of 512", ft.CurrentSize)
	}
	need := (size + blockSize - 1) / blockSize
	if entries < need || entries > maxBATEntries {
		return nil, fmt.Errorf("BAT has %d entries, the %d-byte disk needs %d", entries, size, need)
	}
	if tableOff > uint64(st.Size()) || int64(tableOff)+4*entries > st.Size() {
		return nil, fmt.Errorf("BAT at %d (%d entries) is outside the %d-byte file", tableOff, entries, st.Size())
	}
	raw := make([]byte, 4*need)
	if _, err := f.ReadAt(raw, int64(tableOff)); err != nil {
		return nil, fmt.Errorf("read BAT: %w", err)
	}
	d := &Dynamic{f: f, name: name, Footer: ft, size: size, blockSize: blockSize, batOff: int64(tableOff),
		bitmapLen: (blockSize/512/8 + 511) / 512 * 512, bat: make([]uint32, need)}
	for i := range d.bat {
		d.bat[i] = be.Uint32(raw[4*i:])
		if e := d.bat[i]; e != unusedBATEntry && int64(e)*512+d.bitmapLen+blockSize > st.Size()+FooterSize {
			return nil, fmt.Errorf("BAT entry %d points at sector %d, past the end of the file", i, e)
		}
	}
	if d.end, err = d.layout(int64(ft.DataOffset), 4*entries); err != nil {
		return nil, err
	}
	d.tailOK = tailOK && footerAt == d.end
	d.footer = make([]byte, FooterSize)
	if _, err := f.ReadAt(d.footer, footerAt); err != nil {
		return nil, fmt.Errorf("read footer: %w", err)
	}
	return d, nil
}

// layout refuses blocks that overlap the footer copy, the header, the BAT
// or each other (a write into one would change the other), and returns the
// end of the used space, rounded up to a sector: where a new block can go.
func (d *Dynamic) layout(headerOff, batLen int64) (int64, error) {
	type span struct {
		off, end int64
		block    int // or one of:
	}
	const footerCopy, header, bat = -3, -2, -1
	spans := []span{{0, FooterSize, footerCopy}, {headerOff, headerOff + dynHeaderSize, header}, {d.batOff, d.batOff + batLen, bat}}
	for i, e := range d.bat {
		if e != unusedBATEntry {
			spans = append(spans, span{int64(e) * 512, int64(e)*512 + d.bitmapLen + d.blockSize, i})
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.off, b.off) })
	name := func(s span) string {
		switch s.block {
		case footerCopy:
			return "the footer copy"
		case header:
			return "the dynamic header"
		case bat:
			return "the BAT"
		}
		return fmt.Sprintf("block %d", s.block)
	}
	var last span // the span reaching furthest so far
	for i, s := range spans {
		if i > 0 && s.off < last.end {
			return 0, fmt.Errorf("%s at %d overlaps %s at %d", name(s), s.off, name(last), last.off)
		}
		if s.end > last.end {
			last = s
		}
	}
	return alignUp(last.end, 512), nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// Size is the virtual size.
func (d *Dynamic) Size() int64 { return d.size }

// BlockSize is the allocation unit.
func (d *Dynamic) BlockSize() int64 { return d.blockSize }

// Allocated reports whether block i holds data in the file.
func (d *Dynamic) Allocated(i int64) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.bat[i] != unusedBATEntry
}

// AllocatedBlocks counts the blocks that hold data in the file.
func (d *Dynamic) AllocatedBlocks() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var n int64
	for _, e := range d.bat {
		if e != unusedBATEntry {
			n++
		}
	}
	return n
}

// ReadAt reads the virtual disk. Reads at or past the end return io.EOF.
func (d *Dynamic) ReadAt(p []byte, off int64) (int, error) {
	return diskio.ReadAt("vhd: "+d.name, d.size, p, off, d.readAt)
}

// readAt reads p at off (inside the disk) block by block.
func (d *Dynamic) readAt(p []byte, off int64) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n := 0
	for n < len(p) {
		block, in := (off+int64(n))/d.blockSize, (off+int64(n))%d.blockSize
		c := int(min(int64(len(p)-n), d.blockSize-in))
		if e := d.bat[block]; e == unusedBATEntry {
			clear(p[n : n+c])
		} else {
			at := int64(e)*512 + d.bitmapLen + in
			if m, err := d.f.ReadAt(p[n:n+c], at); m < c {
				if err == io.EOF {
					clear(p[n+m : n+c]) // a last block cut short by the footer
				} else {
					return n, fmt.Errorf("vhd: %s: read at %d: %w", d.name, at, err)
				}
			}
		}
		n += c
	}
	return n, nil
}
