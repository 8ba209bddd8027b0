package scratch

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/sparse"
)

func reflink(in, out *os.File) error {
	return unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
}

// sparseCopy copies only the data extents of in, with copy_file_range so
// the kernel moves the bytes.
func sparseCopy(ctx context.Context, in, out *os.File) error {
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	exts, err := sparse.DataExtents(in, st.Size())
	if err != nil {
		return err
	}
	inFd, outFd := int(in.Fd()), int(out.Fd())
	for _, e := range exts {
		for pos := e.Off; pos < e.Off+e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(inFd, &roff, outFd, &woff, int(e.Off+e.Len-pos), 0)
			if err != nil {
				return fmt.Errorf("copy range at %d: %w", pos, err)
			}
			if n == 0 {
				return fmt.Errorf("copy range at %d: %w", pos, io.ErrUnexpectedEOF)
			}
			pos += int64(n)
		}
	}
	return nil
}
