package vhd

// openMem opens a dynamic VHD held in memory, for writing if rw.
func openMem(f storage, rw bool) (*Dynamic, error) {
	d, err := readDynamic(f, "mem.vhd")
	if err != nil {
		return nil, err
	}
	d.writable, d.ordered = rw, true
	return d, nil
}
