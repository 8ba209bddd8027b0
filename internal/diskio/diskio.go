// Package diskio holds the bounds rules every virtual disk of a fixed size
// follows as an io.ReaderAt and io.WriterAt, so the VHD and VHDX readers
// agree on them: reads are clipped at the end and then report io.EOF,
// writes must lie wholly inside the disk.
package diskio

import (
	"fmt"
	"io"
)

// ReadAt reads p at off from a disk of size bytes through read, which is
// called only with a range inside the disk. name prefixes the errors made
// here.
func ReadAt(name string, size int64, p []byte, off int64, read func(p []byte, off int64) (int, error)) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read at negative offset %d", name, off)
	}
	if off >= size {
		return 0, io.EOF
	}
	short := int64(len(p)) > size-off
	if short {
		p = p[:size-off]
	}
	n, err := read(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// CheckWrite reports an error naming the disk when n bytes at off do not
// fit inside a disk of size bytes. It cannot overflow.
func CheckWrite(name string, size int64, n int, off int64) error {
	if off < 0 || off > size || int64(n) > size-off {
		return fmt.Errorf("%s: write of %d bytes at %d is outside the %d-byte disk", name, n, off, size)
	}
	return nil
}
