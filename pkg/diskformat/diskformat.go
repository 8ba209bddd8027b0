// Package diskformat names disk file formats: one type for every package
// that needs one — how a disk file is laid out (pkg/diskimage detects,
// creates and converts raw, VHD and VHDX files), what a scratch is made as
// (pkg/scratch: raw or VHDX), and how the VMM opens a disk it attaches
// (pkg/uvm/scsi). A writable disk's format is recorded when the disk is
// made, or given with it: the guest can write any header or footer into
// it, so the host never takes its format from its content.
package diskformat

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Format is a disk file format.
type Format string

// The formats.
const (
	// Raw is a raw image or a host block device.
	Raw Format = "raw"
	// VHD is a VHD of either type: a file's format as its name or content
	// tells it (pkg/diskimage). Attaching one needs its type: VHDFixed or
	// VHDDynamic.
	VHD Format = "vhd"
	// VHDFixed is raw data followed by a 512-byte fixed-VHD footer
	// (layer.vhd): the VMM opens it raw, limited to the data.
	VHDFixed Format = "vhd-fixed"
	// VHDDynamic is a dynamic or differencing VHD (QEMU's vpc).
	VHDDynamic Format = "vhd-dynamic"
	// VHDX is a VHDX disk.
	VHDX Format = "vhdx"
	// QCOW2 is a qcow2 image.
	QCOW2 Format = "qcow2"
)

// Valid reports whether f is one of the formats above.
func (f Format) Valid() bool {
	switch f {
	case Raw, VHD, VHDFixed, VHDDynamic, VHDX, QCOW2:
		return true
	}
	return false
}

// Attachable reports whether a disk can be attached to a VM as f: every
// format but VHD, whose type (fixed or dynamic) the host must be told.
func (f Format) Attachable() bool { return f.Valid() && f != VHD }

// Parse returns the format s names if it is one of want; the error names s
// and the formats wanted ("unknown disk format "x" (want raw or vhdx)").
func Parse(s string, want ...Format) (Format, error) {
	if f := Format(s); slices.Contains(want, f) {
		return f, nil
	}
	return "", fmt.Errorf("unknown disk format %q (want %s)", s, list(want))
}

// list is "a", "a or b", "a, b or c".
func list(fs []Format) string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = string(f)
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// FromName guesses a file's format from its name's extension: .vhdx and
// .avhdx are VHDX, .vhd is VHD, .img, .raw and .bin are raw.
func FromName(path string) (Format, bool) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".vhdx", ".avhdx":
		return VHDX, true
	case ".vhd":
		return VHD, true
	case ".img", ".raw", ".bin":
		return Raw, true
	}
	return "", false
}
