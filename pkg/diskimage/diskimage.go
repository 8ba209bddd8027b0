// Package diskimage treats raw images, VHDs (fixed and dynamic) and VHDX
// files alike: detect the format, read any of them as a virtual disk,
// describe and check them, create them, and convert between them without
// writing zero blocks.
package diskimage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/sparse"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// Formats are the file formats this package reads and writes (a new slice
// each call).
func Formats() []diskformat.Format {
	return []diskformat.Format{diskformat.Raw, diskformat.VHD, diskformat.VHDX}
}

// Extent is a range of a virtual disk.
type Extent = sparse.Extent

// Image is a disk opened for reading.
type Image interface {
	io.ReaderAt
	Size() int64
	// Extents lists the ranges that may hold non-zero data; the rest of
	// the disk reads as zeros.
	Extents() ([]Extent, error)
	Close() error
}

// Detect reads the file's signatures: "vhdxfile" at 0 is VHDX, a valid
// "conectix" footer at the end (or its copy at 0) is VHD, anything else raw.
func Detect(path string) (diskformat.Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	head := make([]byte, vhd.FooterSize)
	n, _ := f.ReadAt(head, 0)
	if bytes.HasPrefix(head[:n], []byte("vhdxfile")) {
		return diskformat.VHDX, nil
	}
	// A "conectix" cookie at the end is a VHD even when its footer is
	// damaged, so that the damage is reported rather than read as raw data.
	tail := make([]byte, 8)
	if st.Size() >= vhd.FooterSize {
		if _, err := f.ReadAt(tail, st.Size()-vhd.FooterSize); err == nil && string(tail) == "conectix" {
			return diskformat.VHD, nil
		}
	}
	if n == vhd.FooterSize {
		if ft, err := vhd.ParseFooter(head); err == nil && ft.DiskType != vhd.DiskTypeFixed {
			return diskformat.VHD, nil
		}
	}
	return diskformat.Raw, nil
}

// Open opens any supported disk file for reading (differencing VHDX disks
// with their parent chain).
func Open(path string) (Image, diskformat.Format, error) {
	fm, err := Detect(path)
	if err != nil {
		return nil, "", err
	}
	if fm == diskformat.VHDX {
		d, err := vhdx.Open(path, vhdx.OpenOptions{ReadOnly: true})
		if err != nil {
			return nil, fm, err
		}
		return vhdxImage{d}, fm, nil
	}
	// Raw data: the whole file, or a fixed VHD's data before its footer.
	f, err := os.Open(path)
	if err != nil {
		return nil, fm, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fm, err
	}
	size := st.Size()
	if fm == diskformat.VHD {
		ft, err := vhd.ReadFooter(f, size)
		if err != nil || ft.DiskType != vhd.DiskTypeFixed {
			f.Close()
			d, err := vhd.OpenDynamic(path) // its footer has a copy at 0
			if err != nil {
				return nil, fm, err
			}
			return dynImage{d}, fm, nil
		}
		if int64(ft.CurrentSize) > size-vhd.FooterSize {
			f.Close()
			return nil, fm, fmt.Errorf("vhd: %s: footer says %d bytes, file holds %d", path, ft.CurrentSize, size-vhd.FooterSize)
		}
		size = int64(ft.CurrentSize)
	}
	return rawImage{io.NewSectionReader(f, 0, size), f}, fm, nil
}

type rawImage struct {
	*io.SectionReader
	f *os.File
}

func (r rawImage) Close() error               { return r.f.Close() }
func (r rawImage) Extents() ([]Extent, error) { return sparse.DataExtents(r.f, r.Size()) }

type vhdxImage struct{ *vhdx.Disk }

// Extents merges the allocation of the whole parent chain.
func (v vhdxImage) Extents() ([]Extent, error) {
	var all []Extent
	for d := v.Disk; d != nil; d = d.Parent() {
		all = append(all, d.Allocated()...)
	}
	slices.SortFunc(all, func(a, b Extent) int { return int(min(max(a.Off-b.Off, -1), 1)) })
	var out []Extent
	for _, e := range all {
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len >= e.Off {
			out[n-1].Len = max(out[n-1].Len, e.Off+e.Len-out[n-1].Off)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

type dynImage struct{ *vhd.Dynamic }

func (v dynImage) Extents() ([]Extent, error) {
	var out []Extent
	bs := v.BlockSize()
	for b := int64(0); b*bs < v.Size(); b++ {
		if !v.Allocated(b) {
			continue
		}
		off, l := b*bs, min(bs, v.Size()-b*bs)
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == off {
			out[n-1].Len += l
		} else {
			out = append(out, Extent{Off: off, Len: l})
		}
	}
	return out, nil
}

// CreateOptions describe a new disk file.
type CreateOptions struct {
	Format diskformat.Format
	// Type is dynamic or fixed: VHDX defaults to dynamic, VHD to fixed.
	Type vhdx.Type
	// BlockSize of a VHDX (default 1 MiB) or dynamic VHD (default 2 MiB).
	BlockSize int64
	// LogicalSectorSize is 512 or 4096 (VHDX only).
	LogicalSectorSize int64
	Parent            string // VHDX differencing
}

// ErrUnsupported marks combinations layervisor does not write.
var ErrUnsupported = errors.New("not supported")

// Create makes an empty disk of size bytes at path (which must not exist).
func Create(path string, size int64, o CreateOptions) error {
	switch o.Format {
	case diskformat.VHDX:
		d, err := vhdx.Create(path, vhdx.CreateOptions{Size: size, Type: o.Type, BlockSize: o.BlockSize,
			LogicalSectorSize: o.LogicalSectorSize, Parent: o.Parent})
		if err != nil {
			return err
		}
		return d.Close()
	case diskformat.Raw, diskformat.VHD:
		if o.Parent != "" {
			return fmt.Errorf("create %s: differencing disks must be vhdx: %w", path, ErrUnsupported)
		}
		if o.Format == diskformat.VHD && o.Type == vhdx.Dynamic {
			d, err := vhd.CreateDynamic(path, size, vhd.DynamicOptions{BlockSize: o.BlockSize})
			if err != nil {
				return err
			}
			return d.Close()
		}
		if o.Type == vhdx.Differencing {
			return fmt.Errorf("create %s: %s disks cannot be differencing: %w", path, o.Format, ErrUnsupported)
		}
		if o.Format == diskformat.VHD && o.Type != "" && o.Type != vhdx.Fixed {
			return fmt.Errorf("create %s: unknown VHD type %q (want fixed or dynamic)", path, o.Type)
		}
		if size <= 0 || size%512 != 0 {
			return fmt.Errorf("create %s: size %d is not a positive multiple of 512", path, size)
		}
		return atomicfile.Create(path, 0o600, func(f *os.File) error {
			if err := f.Truncate(size); err != nil {
				return err
			}
			if o.Format == diskformat.VHD {
				return vhd.AppendFixedFooter(f)
			}
			return nil
		})
	}
	return fmt.Errorf("create %s: unknown format %q", path, o.Format)
}
