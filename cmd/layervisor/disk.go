package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/diskimage"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// errCheckFailed makes `disk check` exit 2 on corruption after printing.
var errCheckFailed = exitError{code: 2}

func newDiskCmd() *cobra.Command {
	return &cobra.Command{Use: "disk", Short: "Create, convert, inspect and check VHDX, VHD and raw disk images",
		Long: `Disk images in pure Go, on any OS: VHDX (dynamic, fixed, differencing; MS-VHDX),
VHD (fixed, as on layer images, and dynamic) and raw.

The format of an output comes from --format, else from the file name
(.vhdx, .vhd, .img/.raw); the format of an input is read from its signatures.`}
}

func newDiskCreateCmd(o *options) *cobra.Command {
	var cr struct {
		format, typ, parent string
		blockSize, sector   string
	}
	cmd := &cobra.Command{
		Use:   "create FILE [SIZE]",
		Short: "Create an empty disk (SIZE like 20G; a differencing VHDX takes its parent's size)",
		Example: `  layervisor disk create sandbox.vhdx 20G
  layervisor disk create base.vhdx 10G --type fixed --block-size 32M
  layervisor disk create child.vhdx --parent base.vhdx
  layervisor disk create layer.vhd 64M
  layervisor disk create scratch.vhd 20G --type dynamic`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.RangeArgs(1, 2)(cmd, args); err != nil {
				return err
			}
			if len(args) == 1 && cr.parent == "" {
				return errors.New("SIZE is required unless --parent is given")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			fm, err := outputFormat(cr.format, args[0])
			if err != nil {
				return err
			}
			var size int64
			if len(args) == 2 {
				if size, err = parseSize(args[1]); err != nil {
					return err
				}
			}
			opts := diskimage.CreateOptions{Format: fm, Type: vhdx.Type(cr.typ), Parent: cr.parent}
			if cr.typ == "" && fm == diskformat.VHD {
				opts.Type = vhdx.Fixed
			}
			if cr.blockSize != "" {
				if opts.BlockSize, err = parseSize(cr.blockSize); err != nil {
					return fmt.Errorf("--block-size: %w", err)
				}
			}
			if cr.sector != "" {
				if opts.LogicalSectorSize, err = parseSize(cr.sector); err != nil {
					return fmt.Errorf("--logical-sector-size: %w", err)
				}
			}
			if err := diskimage.Create(args[0], size, opts); err != nil {
				return err
			}
			return printDiskInfo(o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&cr.format, "format", "", "vhdx, vhd or raw (default: from the file name)")
	f.StringVar(&cr.typ, "type", "", "dynamic or fixed (default: dynamic for VHDX, fixed for VHD)")
	f.StringVar(&cr.blockSize, "block-size", "", "block size, a power of two: VHDX 1M to 256M (default 1M), dynamic VHD 512K to 256M (default 2M)")
	f.StringVar(&cr.sector, "logical-sector-size", "", "VHDX logical sector size, 512 (default) or 4096")
	f.StringVar(&cr.parent, "parent", "", "make a differencing VHDX on this parent VHDX")
	return cmd
}

// diskConvertResult is what disk convert prints with --json.
type diskConvertResult struct {
	*diskimage.ConvertResult
	Seconds float64 `json:"seconds"`
}

func newDiskConvertCmd(o *options) *cobra.Command {
	var cv struct{ format, typ, blockSize string }
	cmd := &cobra.Command{
		Use:   "convert IN OUT",
		Short: "Convert a disk to another format without writing zero blocks",
		Long: `Reads IN (raw, fixed or dynamic VHD, VHDX including a differencing chain) and
writes OUT as a new file: zero chunks stay holes (raw) or unallocated blocks
(VHDX, dynamic VHD). OUT must not exist; it appears only when complete.`,
		Example: `  layervisor disk convert scratch.img scratch.vhdx
  layervisor disk convert scratch.img scratch.vhd --type dynamic
  layervisor disk convert child.vhdx flat.img`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			fm, err := outputFormat(cv.format, args[1])
			if err != nil {
				return err
			}
			opts := diskimage.ConvertOptions{Format: fm, Type: vhdx.Type(cv.typ)}
			if cv.blockSize != "" {
				if opts.BlockSize, err = parseSize(cv.blockSize); err != nil {
					return fmt.Errorf("--block-size: %w", err)
				}
			}
			if o.human() && term.IsTerminal(int(os.Stderr.Fd())) {
				var last time.Time
				opts.Progress = func(done, total int64) {
					if time.Since(last) > 100*time.Millisecond || done == total {
						last = time.Now()
						fmt.Fprintf(os.Stderr, "\r%s / %s of data examined ", humanBytes(done), humanBytes(total))
					}
				}
				defer fmt.Fprint(os.Stderr, "\r\033[K")
			}
			start := time.Now()
			res, err := diskimage.Convert(cmd.Context(), args[0], args[1], opts)
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(diskConvertResult{res, time.Since(start).Seconds()})
			}
			if !o.quiet {
				fmt.Printf("%s: %s virtual, %s of data examined, %s written in %s\n", args[1], humanBytes(res.Size),
					humanBytes(res.DataBytes), humanBytes(res.WrittenBytes), time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cv.format, "format", "", "output format: vhdx, vhd or raw (default: from OUT's name)")
	f.StringVar(&cv.typ, "type", "", "dynamic or fixed (default: dynamic for VHDX, fixed for VHD)")
	f.StringVar(&cv.blockSize, "block-size", "", "output block size: VHDX (default 1M) or dynamic VHD (default 2M)")
	return cmd
}

func newDiskInfoCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "info FILE",
		Short: "Show a disk's format, type, sizes and allocation",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return printDiskInfo(o, args[0]) },
	}
}

func newDiskCheckCmd(o *options) *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a disk's structures; exit 2 on corruption",
		Long: `Checks a VHDX (signatures, CRC-32C of headers and region tables, metadata,
BAT entries inside the file and not overlapping, sector bitmaps, the log, the
parent linkage of a differencing disk) or a VHD (footer checksum, geometry,
size; a dynamic VHD's header checksum and BAT, whose blocks must lie in the
file without overlapping). Exits 0 when the file is sound, 2 when it is corrupt. --repair opens a
VHDX for writing so that a pending log is replayed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := diskimage.Check(args[0], repair)
			if err != nil {
				return err
			}
			if o.json {
				if err := printJSON(rep); err != nil {
					return err
				}
			} else {
				for _, w := range rep.Warnings {
					fmt.Fprintf(os.Stderr, "warning: %s\n", w)
				}
				for _, p := range rep.Problems {
					fmt.Printf("%s: %s\n", args[0], p)
				}
				if rep.OK() && !o.quiet {
					fmt.Printf("%s: no problems found\n", args[0])
				}
			}
			if !rep.OK() {
				return errCheckFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "replay a pending VHDX log (writes the file)")
	return cmd
}

func outputFormat(flag, name string) (diskformat.Format, error) {
	if flag != "" {
		return diskformat.Parse(strings.ToLower(flag), diskimage.Formats()...)
	}
	if fm, ok := diskformat.FromName(name); ok {
		return fm, nil
	}
	return "", fmt.Errorf("cannot tell the format of %s from its name: give --format vhdx, vhd or raw", name)
}

func printDiskInfo(o *options, path string) error {
	in, err := diskimage.Inspect(path)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(in)
	}
	if o.quiet {
		return nil
	}
	fmt.Printf("%s: %s %s, virtual size %s (%d bytes), file %s\n", path, in.Type, in.Format,
		humanBytes(in.VirtualSize), in.VirtualSize, humanBytes(in.FileSize))
	if v := in.VHDX; v != nil {
		fmt.Printf("  block size %s, sectors %d logical / %d physical, %d of %d blocks present\n",
			humanBytes(v.BlockSize), v.LogicalSectorSize, v.PhysicalSectorSize, v.BlocksPresent, v.Blocks)
		fmt.Printf("  disk id %s, data-write GUID %s, creator %q\n", v.DiskID, v.DataWriteGUID, v.Creator)
		if v.Type == vhdx.Differencing {
			fmt.Printf("  parent linkage %s, relative path %q, absolute path %q\n", v.ParentLinkage,
				v.ParentLocator["relative_path"], v.ParentLocator["absolute_win32_path"])
		}
	}
	if ft := in.VHDFooter; ft != nil {
		fmt.Printf("  geometry C/H/S %d/%d/%d, creator %q\n", ft.Geometry.Cylinders, ft.Geometry.Heads,
			ft.Geometry.SectorsPerTrack, ft.CreatorApp[:])
	}
	if v := in.VHDDynamic; v != nil {
		fmt.Printf("  block size %s, %d of %d blocks present\n", humanBytes(v.BlockSize), v.BlocksPresent, v.Blocks)
	}
	return nil
}
