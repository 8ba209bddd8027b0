package diskimage

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/zero"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// ConvertOptions describe the output of Convert.
type ConvertOptions struct {
	Format diskformat.Format
	// Type is dynamic or fixed: VHDX defaults to dynamic, VHD to fixed.
	Type vhdx.Type
	// BlockSize of a VHDX (default 1 MiB) or dynamic VHD (default 2 MiB).
	BlockSize int64
	// Progress, when set, is called with bytes examined so far and the
	// total of the input's data extents.
	Progress func(done, total int64)
}

// ConvertResult says what a conversion did.
type ConvertResult struct {
	Size         int64 `json:"size"`         // virtual size written
	DataBytes    int64 `json:"dataBytes"`    // input extents examined
	WrittenBytes int64 `json:"writtenBytes"` // non-zero bytes written
}

const copyChunk = 1 << 20

// Convert copies the virtual disk in src into a new file dst of another
// format. Zero chunks are not written: they stay holes in raw output and
// unallocated blocks in VHDX and dynamic VHD output. dst appears only when
// complete.
func Convert(ctx context.Context, src, dst string, o ConvertOptions) (*ConvertResult, error) {
	if _, err := os.Lstat(dst); err == nil { // fail before reading anything
		return nil, fmt.Errorf("convert to %s: %w", dst, os.ErrExist)
	}
	in, _, err := Open(src)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", src, err)
	}
	defer in.Close()
	exts, err := in.Extents()
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", src, err)
	}
	res := &ConvertResult{Size: in.Size()}
	fill := func(w io.WriterAt) error { return copyExtents(ctx, in, exts, w, res, o.Progress) }
	switch o.Format {
	case diskformat.Raw, diskformat.VHD:
		if o.Format == diskformat.VHD && o.Type != "" && o.Type != vhdx.Fixed && o.Type != vhdx.Dynamic {
			return nil, fmt.Errorf("convert to %s: unknown VHD type %q (want fixed or dynamic)", dst, o.Type)
		}
		if o.Format == diskformat.VHD && in.Size()%512 != 0 {
			return nil, fmt.Errorf("convert %s: size %d is not a multiple of 512, as a VHD needs", src, in.Size())
		}
		if o.Format == diskformat.VHD && o.Type == vhdx.Dynamic {
			err = convertToDynamicVHD(dst, in.Size(), o, fill)
			break
		}
		err = atomicfile.Create(dst, 0o600, func(f *os.File) error {
			if err := f.Truncate(in.Size()); err != nil {
				return err
			}
			if err := fill(f); err != nil {
				return err
			}
			if o.Format == diskformat.VHD {
				return vhd.AppendFixedFooter(f)
			}
			return nil
		})
	case diskformat.VHDX:
		res.Size = (in.Size() + 511) / 512 * 512 // VHDX sizes are whole sectors
		err = convertToVHDX(dst, res.Size, o, fill)
	default:
		err = fmt.Errorf("unknown format %q", o.Format)
	}
	if err != nil {
		return nil, fmt.Errorf("convert %s to %s: %w", src, dst, err)
	}
	return res, nil
}

func convertToVHDX(dst string, size int64, o ConvertOptions, fill func(io.WriterAt) error) error {
	typ := o.Type
	if typ == "" {
		typ = vhdx.Dynamic
	}
	if typ != vhdx.Dynamic && typ != vhdx.Fixed {
		return fmt.Errorf("conversion writes dynamic or fixed VHDX, not %s", typ)
	}
	return atomicfile.Create(dst, 0o600, func(f *os.File) error {
		if err := vhdx.Format(f, dst, vhdx.CreateOptions{Size: size, Type: typ, BlockSize: o.BlockSize}); err != nil {
			return err
		}
		// Nobody sees the file until it is complete: skip the ordering flushes.
		d, err := vhdx.OpenFile(f, dst, vhdx.OpenOptions{Unordered: true})
		if err != nil {
			return err
		}
		return fillAndClose(d, fill)
	})
}

func convertToDynamicVHD(dst string, size int64, o ConvertOptions, fill func(io.WriterAt) error) error {
	return atomicfile.Create(dst, 0o600, func(f *os.File) error {
		// Nobody sees the file until it is complete: skip the ordering flushes.
		d, err := vhd.FormatDynamic(f, dst, size, vhd.DynamicOptions{BlockSize: o.BlockSize, Unordered: true})
		if err != nil {
			return err
		}
		return fillAndClose(d, fill)
	})
}

// fillAndClose fills a disk opened on the temp file and closes it, which
// flushes what fill wrote.
func fillAndClose(d interface {
	io.WriterAt
	io.Closer
}, fill func(io.WriterAt) error) error {
	if err := fill(d); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// copyExtents copies the extents chunk by chunk (chunks aligned to 1 MiB, so
// VHDX blocks are written whole), skipping all-zero chunks.
func copyExtents(ctx context.Context, in Image, exts []Extent, w io.WriterAt, res *ConvertResult, progress func(int64, int64)) error {
	var total int64
	for _, e := range exts {
		total += e.Len
	}
	buf := make([]byte, copyChunk)
	for _, e := range exts {
		for off := e.Off; off < e.Off+e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(copyChunk-off%copyChunk, e.Off+e.Len-off)
			b := buf[:n]
			if m, err := in.ReadAt(b, off); m < len(b) {
				return fmt.Errorf("read at %d: %w", off, err)
			}
			if !zero.Is(b) {
				if _, err := w.WriteAt(b, off); err != nil {
					return err
				}
				res.WrittenBytes += n
			}
			off += n
			res.DataBytes += n
			if progress != nil {
				progress(res.DataBytes, total)
			}
		}
	}
	return nil
}
