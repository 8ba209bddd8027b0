package diskimage

import (
	"fmt"
	"os"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// Info describes a disk file of any format. The JSON field names are what
// `layervisor disk info --json` prints; scripts rely on them.
type Info struct {
	Path   string            `json:"path"`
	Format diskformat.Format `json:"format"`
	// Type is "dynamic", "fixed" or "differencing" (VHD, VHDX), or "raw".
	Type        string `json:"type"`
	VirtualSize int64  `json:"virtualSize"`
	FileSize    int64  `json:"fileSize"`
	// Exactly one of the format's details is set, none for raw.
	VHDX       *vhdx.Info  `json:"vhdx,omitempty"`
	VHDFooter  *vhd.Footer `json:"vhdFooter,omitempty"`
	VHDDynamic *VHDBlocks  `json:"vhdDynamic,omitempty"` // besides VHDFooter
}

// VHDBlocks is a dynamic VHD's allocation.
type VHDBlocks struct {
	BlockSize     int64 `json:"blockSize"`
	Blocks        int64 `json:"blocks"`
	BlocksPresent int64 `json:"blocksPresent"`
}

var vhdTypes = map[uint32]string{vhd.DiskTypeFixed: "fixed", vhd.DiskTypeDynamic: "dynamic", vhd.DiskTypeDifferencing: "differencing"}

// Inspect reads the format, type, sizes and allocation of the disk file at
// path. It opens the file read-only, and a differencing VHDX without its
// parent, so it describes files other readers would refuse; Check says
// whether they are sound.
func Inspect(path string) (*Info, error) {
	fm, err := Detect(path)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	in := &Info{Path: path, Format: fm, FileSize: st.Size()}
	switch fm {
	case diskformat.VHDX:
		d, err := vhdx.Open(path, vhdx.OpenOptions{ReadOnly: true, NoParent: true})
		if err != nil {
			return nil, err
		}
		defer d.Close()
		vi := d.Info()
		in.VHDX, in.Type, in.VirtualSize = &vi, string(vi.Type), vi.VirtualSize
	case diskformat.VHD:
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		ft, err := vhd.ReadFooter(f, st.Size())
		if err != nil || ft.DiskType == vhd.DiskTypeDynamic {
			// A dynamic VHD's footer has a copy at 0, so a damaged last
			// sector still shows the disk; `disk check` says why.
			d, derr := vhd.OpenDynamic(path)
			if derr != nil && err != nil {
				return nil, derr
			}
			if derr == nil {
				defer d.Close()
				ft = d.Footer
				bs := d.BlockSize()
				in.VHDDynamic = &VHDBlocks{BlockSize: bs, Blocks: (d.Size() + bs - 1) / bs, BlocksPresent: d.AllocatedBlocks()}
			}
		}
		in.VHDFooter, in.VirtualSize = ft, int64(ft.CurrentSize)
		in.Type = vhdTypes[ft.DiskType]
	default:
		in.Type, in.VirtualSize = "raw", st.Size()
	}
	return in, nil
}

// Report is what Check found. The JSON field names are what
// `layervisor disk check --json` prints.
type Report struct {
	// VHDX is the disk's description when the file is a VHDX that opened.
	VHDX *vhdx.Info `json:"info,omitempty"`
	// Problems make the file unusable or wrong; Warnings do not.
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"`
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Check validates the disk file at path: a VHDX with vhdx.Check (repair
// opens it for writing, so that a pending log is replayed; other formats
// ignore it), a VHD's footer and, when dynamic, its header and BAT (a
// damaged footer at the end is only a warning when its copy at offset 0 is
// sound). A raw file has no structure; a size that is not a whole number
// of sectors is a warning. Corruption is reported in the Report; the error
// is for files that cannot be read at all (missing, unreadable, a
// differencing VHDX whose parent is missing).
func Check(path string, repair bool) (*Report, error) {
	fm, err := Detect(path)
	if err != nil {
		return nil, err
	}
	switch fm {
	case diskformat.VHDX:
		r, err := vhdx.Check(path, repair)
		if err != nil {
			return nil, err
		}
		return &Report{VHDX: r.Info, Problems: r.Problems, Warnings: r.Warnings}, nil
	case diskformat.VHD:
		r := &Report{}
		if p := vhd.CheckFile(path); p != nil {
			r.Problems = append(r.Problems, p.Error())
		} else if err := tailFooter(path); err != nil {
			// CheckFile accepts a dynamic VHD read through its footer copy.
			r.Warnings = append(r.Warnings, fmt.Sprintf("the footer at the end is damaged (%v); its copy at offset 0 is sound", err))
		}
		return r, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size()%512 != 0 {
		return &Report{Warnings: []string{fmt.Sprintf("raw size %d is not a multiple of 512", st.Size())}}, nil
	}
	return &Report{}, nil
}

// tailFooter reads the footer at the end of a VHD file.
func tailFooter(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	_, err = vhd.ReadFooter(f, st.Size())
	return err
}
