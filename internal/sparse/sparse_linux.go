package sparse

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DataExtents lists the data (non-hole) ranges of f below size with
// SEEK_DATA/SEEK_HOLE, so sparse inputs are not read through their holes.
func DataExtents(f *os.File, size int64) ([]Extent, error) {
	var out []Extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return []Extent{{Off: off, Len: size - off}}, nil // no hole support: all data
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s: %w", f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		hole = min(hole, size)
		if data >= size {
			break
		}
		out = append(out, Extent{Off: data, Len: hole - data})
		off = hole
	}
	return out, nil
}
