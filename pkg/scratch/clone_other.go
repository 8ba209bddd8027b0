//go:build !linux

package scratch

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/layervisor/layervisor/internal/zero"
)

func reflink(in, out *os.File) error { return errors.ErrUnsupported }

// sparseCopy without SEEK_DATA: copy every block that is not all zeros.
func sparseCopy(ctx context.Context, in, out *os.File) error {
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := in.ReadAt(buf, off)
		if n > 0 && !zero.Is(buf[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
		}
		off += int64(n)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
