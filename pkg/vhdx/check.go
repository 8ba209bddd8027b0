package vhdx

import (
	"bytes"
	"errors"
	"fmt"
	"os"
)

// CheckReport is what Check found.
type CheckReport struct {
	Info *Info `json:"info,omitempty"`
	// Problems make the file unusable or wrong; Warnings do not.
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"`
}

// OK reports whether no problem was found.
func (r *CheckReport) OK() bool { return len(r.Problems) == 0 }

// Check validates the file at path: everything Open validates (signatures,
// CRC-32C of headers and region tables, region and block overlaps, BAT
// entries inside the file, required metadata, the log, the parent linkage)
// plus the redundant copies. With repair it opens the file for writing, so
// a pending log is replayed. The error is for failures to read at all.
func Check(path string, repair bool) (*CheckReport, error) {
	r := &CheckReport{}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	defer f.Close()
	r.Warnings = append(r.Warnings, redundantCopies(f)...)
	d, err := Open(path, OpenOptions{ReadOnly: !repair})
	if err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrParentMismatch) || errors.Is(err, ErrLogNeedsReplay) {
			r.Problems = append(r.Problems, err.Error())
			return r, nil
		}
		return nil, err
	}
	defer d.Close()
	in := d.Info()
	r.Info = &in
	if in.LogReplayed {
		r.Warnings = append(r.Warnings, "the log was replayed")
	}
	d.mu.RLock()
	if d.physEnd > d.usedEnd {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d bytes past the last block are unused (preallocated or leaked)", d.physEnd-d.usedEnd))
	}
	d.mu.RUnlock()
	return r, nil
}

// redundantCopies compares the two headers' validity and the two region
// tables; a damaged copy is survivable, so it is a warning.
func redundantCopies(f *os.File) []string {
	var w []string
	for i, off := range []int64{header1Offset, header2Offset} {
		b := make([]byte, headerSize)
		if _, err := f.ReadAt(b, off); err != nil {
			continue
		}
		if _, err := decodeHeader(b); err != nil {
			w = append(w, fmt.Sprintf("header %d is invalid: %v", i+1, err))
		}
	}
	var tables [2][]byte
	for i, off := range []int64{region1Offset, region2Offset} {
		b := make([]byte, regionTblSize)
		if _, err := f.ReadAt(b, off); err != nil {
			continue
		}
		if _, err := decodeRegionTable(b); err != nil {
			w = append(w, fmt.Sprintf("region table %d is invalid: %v", i+1, err))
			continue
		}
		tables[i] = b
	}
	if tables[0] != nil && tables[1] != nil && !bytes.Equal(tables[0], tables[1]) {
		w = append(w, "the two region tables differ")
	}
	return w
}
