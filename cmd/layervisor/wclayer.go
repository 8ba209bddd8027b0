package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/pkg/wclayer"
	"github.com/layervisor/layervisor/pkg/wclayer/cimlayer"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

// wclayerResult is what wclayer import and export print with --json.
type wclayerResult struct {
	Layer   string   `json:"layer"`
	CIM     string   `json:"cim"`
	Parents []string `json:"parents,omitempty"`
	Tar     string   `json:"tar,omitempty"`
	cimlayer.Stats
	// UtilityVM is set when import prepared a base layer's utility VM for
	// CIM boot.
	UtilityVM *wclayerUVM `json:"utilityVM,omitempty"`
	Seconds   float64     `json:"seconds"`
}

// wclayerUVM describes a utility VM prepared for CIM boot.
type wclayerUVM struct {
	Build       int      `json:"build"`
	DiskID      string   `json:"diskID"`      // GPT disk GUID of SystemTemplateBase.vhdx
	PartitionID string   `json:"partitionID"` // its data partition's unique GUID
	Files       []string `json:"files"`       // made or edited, relative to the layer folder
}

// openInput opens a file, or stdin for "-".
func openInput(p string) (io.ReadCloser, error) {
	if p == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(p)
}

func newWclayerCmd() *cobra.Command {
	return &cobra.Command{Use: "wclayer", Short: "Import and export Windows container layers as CimFS layers",
		Long: `A Windows layer is a layer folder plus a CimFS image. The folder keeps the
"std files" (config hives, Hives/*_Delta and *_BASE, the utility VM's hives and
boot files, layout); the CIM holds the layer's whole merged view (a fork of its
parent's CIM) under Files\, Hives\ and UtilityVM\Files\. As hcsshim does, a
layer's CIM lives at LAYERDIR/../cim-layers/<name of LAYERDIR>.cim unless --cim
says otherwise; a fork must sit in the same directory as its parent's CIM.`}
}

func newWclayerImportCmd(o *options) *cobra.Command {
	var parents []string
	var cimPath, parentCIM string
	var forceUVM bool
	cmd := &cobra.Command{
		Use:   "import TAR LAYERDIR",
		Short: "Import a Windows layer tar (- for stdin) into LAYERDIR and its CIM",
		Long: `Import reads a Windows layer tar (go-winio backuptar format), writes the std
files into LAYERDIR (which must not exist, or be empty) and the layer's CIM,
forked from the immediate parent's. --parent names the parent layer folders,
top-most first (hcsshim order); none for a base layer. A base layer with a
utility VM (UtilityVM/Files) of a build above 20348 (any build with
--force-uvm) gets it prepared for CIM boot, as image import does:
UtilityVM/SystemTemplateBase.vhdx, the BCD and SYSTEM hive edited for CIM boot
(in the folder and in the CIM) and UtilityVM/SystemTemplate.vhdx. On any error
nothing is left: no folder, no .cim, no region or objectid file.`,
		Example: `  layervisor wclayer import base.tar /s/layers/base
  layervisor wclayer import child.tar /s/layers/child --parent /s/layers/base
  layervisor --json wclayer import top.tar /s/layers/top --parent /s/layers/child --parent /s/layers/base`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := openInput(args[0])
			if err != nil {
				return err
			}
			defer in.Close()
			cp := cimPath
			if cp == "" {
				cp = cimlayer.CIMPath(args[1])
			}
			opts := wclayer.ImportOptions{CIM: cp, ParentCIM: parentCIM, ForceUtilityVM: forceUVM}
			tty := o.human() && term.IsTerminal(int(os.Stderr.Fd()))
			if tty {
				opts.Progress = func(p cimlayer.Progress) {
					fmt.Fprintf(os.Stderr, "\r\033[Kimporting %s: %d entries, %s", filepath.Base(args[1]), p.Entries, humanBytes(p.Bytes))
					if p.Done {
						fmt.Fprintln(os.Stderr)
					}
				}
			}
			start := time.Now()
			ir, err := wclayer.Import(cmd.Context(), in, args[1], parents, opts)
			if err != nil {
				if tty {
					fmt.Fprintln(os.Stderr)
				}
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			st := ir.Stats
			res := wclayerResult{Layer: args[1], CIM: cp, Parents: parents, Tar: args[0], Stats: st, Seconds: time.Since(start).Seconds()}
			if u := ir.UtilityVM; u != nil {
				res.UtilityVM = &wclayerUVM{Build: u.Build, DiskID: u.DiskID.String(), PartitionID: u.PartitionID.String(), Files: u.Changed}
			}
			if o.json {
				return printJSON(res)
			}
			if !o.quiet {
				kind := "layer"
				if st.Base {
					kind = "base layer"
				}
				fmt.Printf("imported %s %s: %d entries, %d files, %s (%d std files in the folder), CIM %s, in %s\n",
					kind, args[1], st.Entries, st.Files, humanBytes(st.Bytes), st.StdFiles, cp, time.Since(start).Round(time.Millisecond))
				if u := ir.UtilityVM; u != nil {
					fmt.Printf("utility VM (build %d) prepared for CIM boot: %s, %s\n", u.Build, uvmlayer.BaseVHDX, uvmlayer.TemplateVHDX)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&parents, "parent", nil, "parent layer folder, top-most first (repeat)")
	f.StringVar(&cimPath, "cim", "", "CIM to write (default LAYERDIR/../cim-layers/<name>.cim)")
	f.StringVar(&parentCIM, "parent-cim", "", "the immediate parent's CIM (default from the first --parent)")
	f.BoolVar(&forceUVM, "force-uvm", false, "base layers: prepare the utility VM for CIM boot even if its build is 20348 or older")
	return cmd
}

func newWclayerExportCmd(o *options) *cobra.Command {
	var exParent, exCIM, exParentCIM string
	cmd := &cobra.Command{
		Use:   "export LAYERDIR OUT",
		Short: "Write a layer's tar (- for stdout) from its CIM",
		Long: `Export writes the layer tar of LAYERDIR's CIM: the whole tree of a base layer,
or, with --parent (the immediate parent folder), only what the layer changed
(new and changed entries, whiteouts for deleted names). Files import generates
(layout, Hives/*_BASE) are left out, so importing the export gives the same
CIM. OUT must not exist; it appears only when complete.`,
		Example: `  layervisor wclayer export /s/layers/child child.tar --parent /s/layers/base`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cp := exCIM
			if cp == "" {
				cp = cimlayer.CIMPath(args[0])
			}
			pc := exParentCIM
			if pc == "" && exParent != "" {
				pc = cimlayer.CIMPath(exParent)
			}
			start := time.Now()
			var st cimlayer.Stats
			var err error
			if args[1] == "-" {
				st, err = cimlayer.Export(cmd.Context(), os.Stdout, cp, pc)
			} else {
				err = atomicfile.Create(args[1], 0o644, func(f *os.File) error {
					var err error
					st, err = cimlayer.Export(cmd.Context(), f, cp, pc)
					return err
				})
			}
			if err != nil {
				return err
			}
			res := wclayerResult{Layer: args[0], CIM: cp, Tar: args[1], Stats: st, Seconds: time.Since(start).Seconds()}
			if exParent != "" {
				res.Parents = []string{exParent}
			}
			if o.json && args[1] != "-" {
				return printJSON(res)
			}
			if !o.quiet && args[1] != "-" {
				fmt.Printf("exported %s to %s: %d entries, %d files, %s\n", args[0], args[1], st.Entries, st.Files, humanBytes(st.Bytes))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&exParent, "parent", "", "the immediate parent layer folder (omit for a base layer)")
	f.StringVar(&exCIM, "cim", "", "the layer's CIM (default LAYERDIR/../cim-layers/<name>.cim)")
	f.StringVar(&exParentCIM, "parent-cim", "", "the parent's CIM (default from --parent)")
	return cmd
}

// synthResult is what dev build-wclayer prints with --json.
type synthResult struct {
	Tar     string `json:"tar"`
	Entries int    `json:"entries"`
	Files   int    `json:"files"`
	Bytes   int64  `json:"bytes"`
}

// newDevBuildWclayerCmd is dev build-wclayer: synthetic Windows layer tars
// for demos and tests.
func newDevBuildWclayerCmd(o *options) *cobra.Command {
	var seed, childSeed uint64
	var files int
	var sizeMB int64
	var uvm bool
	cmd := &cobra.Command{
		Use:   "build-wclayer OUT",
		Short: "Write a synthetic Windows layer tar (base, or a child with --child SEED)",
		Long: `build-wclayer writes a deterministic Windows layer tar (pkg/wclayer/synth):
a base layer with real registry hives, files with security descriptors, EAs,
alternate streams, hard links, symlinks and junctions (and, with --uvm, a
utility VM tree with a BCD store); or, with --child, a layer on top of that base
with rewritten and deleted files, a deleted directory and delta hives.`,
		Example: `  layervisor dev build-wclayer --files 2000 --size-mb 50 base.tar
  layervisor dev build-wclayer --files 2000 --size-mb 50 --child 1 child1.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			so := synth.Options{Seed: seed, Files: files, Bytes: sizeMB << 20, UtilityVM: uvm}
			var st synth.Stats
			err := atomicfile.Create(args[0], 0o644, func(f *os.File) error {
				var err error
				if childSeed != 0 {
					st, err = synth.Child(f, so, childSeed)
				} else {
					st, err = synth.Base(f, so)
				}
				return err
			})
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(synthResult{Tar: args[0], Entries: st.Entries, Files: st.Files, Bytes: st.Bytes})
			}
			if !o.quiet {
				fmt.Printf("wrote %s: %d entries, %d files, %s\n", args[0], st.Entries, st.Files, humanBytes(st.Bytes))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&seed, "seed", 1, "seed of the base layer")
	f.Uint64Var(&childSeed, "child", 0, "write a child layer with this seed (non-zero) on top of the base")
	f.IntVar(&files, "files", 200, "generated files of the base layer")
	f.Int64Var(&sizeMB, "size-mb", 4, "their total size in MiB, about")
	f.BoolVar(&uvm, "uvm", false, "add UtilityVM/Files (BCD, boot files, hives)")
	return cmd
}
