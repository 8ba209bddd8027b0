// Package uvmlayer prepares the utility-VM part of a Windows base layer for
// booting from a CIM, as hcsshim's processUtilityVMLayer did (Windows
// utility-VM builds above 20348):
//
//  1. UtilityVM/SystemTemplateBase.vhdx: a dynamic VHDX of 10 GiB with 1 MiB
//     blocks holding a GPT with a Microsoft reserved partition and a basic
//     data partition formatted NTFS;
//  2. the GPT disk GUID and the data partition's GUID, read back from it;
//  3. the UtilityVM BCD store edited for CIM boot (bcd.ConfigureCIMBoot);
//  4. CIM boot enabled in the UtilityVM SYSTEM hive (cimboot);
//  5. UtilityVM/SystemTemplate.vhdx: a differencing VHDX (1 MiB blocks) whose
//     parent is the base; made last, once the base no longer changes. It
//     records the base's absolute path: a caller that prepares the layer in
//     a temporary folder defers this step (Options.DeferTemplate) and runs
//     MakeTemplate once the folder is in its final place.
//
// Any failure removes the VHDX files it made and puts the BCD and SYSTEM
// hive back byte for byte. The two hives it edits (EditedFiles) must also
// reach the layer's CIM: the caller writes the CIM after Process.
//
// Our choices where Windows' are not public (HcsFormatWritableLayerVhd is
// closed): the MSR is 16 MiB at 1 MiB (as Windows' own partitioning does on
// small disks), the data partition fills the rest on 1 MiB boundaries, and
// NTFS is mkntfs's quick format with 4 KiB clusters, 512-byte sectors and
// the label "UtilityVM". mkntfs (Debian's ntfs-3g) formats a sparse temp
// file; only its data extents are copied into the VHDX, so 10 GiB is never
// written. NTFS's $LogFile (about 51 MiB of 0xFF for this size) is data, so
// the base VHDX is about 55 MiB. The VM group ACLs hcsshim granted on the
// VHDX files are a Windows host matter and are not set here.
package uvmlayer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/sparse"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/internal/zero"
	"github.com/layervisor/layervisor/pkg/gpt"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/bcd"
	"github.com/layervisor/layervisor/pkg/regf/cimboot"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// Paths inside a layer folder (slash-separated).
const (
	FilesDir      = "UtilityVM/Files"
	BaseVHDX      = "UtilityVM/SystemTemplateBase.vhdx"
	TemplateVHDX  = "UtilityVM/SystemTemplate.vhdx"
	BCDPath       = "UtilityVM/Files/EFI/Microsoft/Boot/BCD"
	SystemHive    = "UtilityVM/Files/Windows/System32/config/SYSTEM"
	SoftwareHive  = "UtilityVM/Files/Windows/System32/config/SOFTWARE"
	MinBuild      = 20349 // CIM boot needs a utility VM newer than 20348
	DiskSize      = 10 << 30
	BlockSize     = 1 << 20
	MSRSize       = 16 << 20
	VolumeLabel   = "UtilityVM"
	ClusterSize   = 4096
	ntfsSector    = 512
	copyChunkSize = 1 << 20
)

// EditedFiles are the files in UtilityVM/Files that Process changes; the
// CIM of the layer must carry the edited versions.
var EditedFiles = []string{BCDPath, SystemHive}

// Step names a step of Process, for Options.AfterStep.
type Step string

// The steps, in order.
const (
	StepBaseVHDX     Step = "base-vhdx"
	StepReadIDs      Step = "read-ids"
	StepBCD          Step = "bcd"
	StepSystemHive   Step = "system-hive"
	StepTemplateVHDX Step = "template-vhdx"
)

// Options tune Process.
type Options struct {
	// Force processes the utility VM whatever its build (or when the build
	// cannot be read).
	Force bool
	// TempDir holds the sparse NTFS image while it is made (default
	// os.TempDir()); it must support sparse files to stay small.
	TempDir string
	// DeferTemplate leaves step 5 to MakeTemplate: SystemTemplate.vhdx
	// names its parent by absolute path, which must be the layer's final
	// place, not a temporary folder it is renamed from.
	DeferTemplate bool
	// AfterStep, when set, runs after each step; an error from it fails
	// Process as a failure of that step would (tests use it for rollback).
	AfterStep func(Step) error
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Result says what Process did.
type Result struct {
	Processed   bool     // false: no utility VM, or a build too old (see Build)
	Build       int      // the utility VM's build number, 0 if not read
	DiskID      gpt.GUID // GPT disk GUID of the base VHDX
	PartitionID gpt.GUID // unique GUID of its data partition
	// Changed lists the files created or edited, relative to the layer.
	Changed []string
}

// Process runs the utility-VM step on the base layer at layerDir. cimRelPath
// is the layer's CIM relative to the directory the utility VM sees over
// VMBus (hcsshim: `cim-layers\<layer id>.cim`).
func Process(ctx context.Context, layerDir, cimRelPath string, opts Options) (res *Result, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	res = &Result{}
	p := func(rel string) string { return filepath.Join(layerDir, filepath.FromSlash(rel)) }
	if fi, err := os.Stat(p(FilesDir)); errors.Is(err, os.ErrNotExist) {
		return res, nil
	} else if err != nil {
		return nil, fmt.Errorf("uvm layer %s: %w", layerDir, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("uvm layer %s: %s is not a directory", layerDir, FilesDir)
	}
	build, err := ReadBuild(p(SoftwareHive))
	res.Build = build
	switch {
	case err != nil && !opts.Force:
		return nil, fmt.Errorf("uvm layer %s: %w (Force skips the check)", layerDir, err)
	case err == nil && build < MinBuild && !opts.Force:
		log.Info("utility VM too old for CIM boot; skipped", "layer", layerDir, "build", build)
		return res, nil
	}
	if cimRelPath == "" {
		return nil, fmt.Errorf("uvm layer %s: empty CIM path", layerDir)
	}
	for _, rel := range []string{BCDPath, SystemHive} {
		if err := noSymlinks(layerDir, rel); err != nil {
			return nil, fmt.Errorf("uvm layer %s: %w", layerDir, err)
		}
	}
	for _, rel := range []string{BaseVHDX, TemplateVHDX} {
		if _, err := os.Lstat(p(rel)); err == nil {
			return nil, fmt.Errorf("uvm layer %s: %s already exists", layerDir, rel)
		}
	}

	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	step := func(s Step, rel string) error {
		if rel != "" {
			res.Changed = append(res.Changed, rel)
		}
		if opts.AfterStep != nil {
			if err := opts.AfterStep(s); err != nil {
				return fmt.Errorf("uvm layer %s: after step %s: %w", layerDir, s, err)
			}
		}
		return ctx.Err()
	}
	removeFile := func(path string) {
		u.Push("remove "+path, func(context.Context) error { return os.Remove(path) })
	}

	// 1. The base disk. Create makes the file whole or not at all; from then
	// on it is ours to remove.
	base := p(BaseVHDX)
	d, err := vhdx.Create(base, vhdx.CreateOptions{Size: DiskSize, BlockSize: BlockSize})
	if err != nil {
		return nil, fmt.Errorf("uvm layer %s: creating %s: %w", layerDir, BaseVHDX, err)
	}
	removeFile(base)
	err = formatDisk(ctx, d, opts.TempDir)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("uvm layer %s: %s: %w", layerDir, BaseVHDX, err)
	}
	if err := step(StepBaseVHDX, BaseVHDX); err != nil {
		return nil, err
	}

	// 2. Its GPT ids, read back as Windows reads the attached disk's layout.
	if res.DiskID, res.PartitionID, err = ReadIDs(base); err != nil {
		return nil, fmt.Errorf("uvm layer %s: %w", layerDir, err)
	}
	if err := step(StepReadIDs, ""); err != nil {
		return nil, err
	}

	// 3 and 4. The hives, each saved first so a later failure restores it.
	edits := []struct {
		rel  string
		s    Step
		edit func(*regf.Hive) error
	}{
		{BCDPath, StepBCD, func(h *regf.Hive) error {
			st, err := bcd.Open(h)
			if err != nil {
				return err
			}
			return st.ConfigureCIMBoot(res.DiskID.String(), res.PartitionID.String(), cimRelPath)
		}},
		{SystemHive, StepSystemHive, cimboot.EnableSystemHive},
	}
	for _, e := range edits {
		path := p(e.rel)
		if err := saveForRestore(&u, path); err != nil {
			return nil, fmt.Errorf("uvm layer %s: %w", layerDir, err)
		}
		if err := regf.EditFile(path, e.edit); err != nil {
			return nil, fmt.Errorf("uvm layer %s: editing %s: %w", layerDir, e.rel, err)
		}
		if err := step(e.s, e.rel); err != nil {
			return nil, err
		}
	}

	// 5. The template, now that the base is final.
	if !opts.DeferTemplate {
		if err := MakeTemplate(layerDir); err != nil {
			return nil, err
		}
		removeFile(p(TemplateVHDX))
		if err := step(StepTemplateVHDX, TemplateVHDX); err != nil {
			return nil, err
		}
	}
	u.Commit()
	res.Processed = true
	log.Info("utility VM prepared for CIM boot", "layer", layerDir, "build", build,
		"disk", res.DiskID, "partition", res.PartitionID)
	return res, nil
}

// MakeTemplate makes UtilityVM/SystemTemplate.vhdx in the base layer at
// layerDir, a differencing child of its SystemTemplateBase.vhdx recorded by
// layerDir's absolute path: Process's last step, which a caller that
// deferred it (Options.DeferTemplate) runs once layerDir is the layer's
// final place. On failure no template is left.
func MakeTemplate(layerDir string) error {
	base := filepath.Join(layerDir, filepath.FromSlash(BaseVHDX))
	tmpl := filepath.Join(layerDir, filepath.FromSlash(TemplateVHDX))
	c, err := vhdx.Create(tmpl, vhdx.CreateOptions{Parent: base, BlockSize: BlockSize})
	if err != nil {
		return fmt.Errorf("uvm layer %s: creating %s: %w", layerDir, TemplateVHDX, err)
	}
	if err := c.Close(); err != nil {
		os.Remove(tmpl)
		return fmt.Errorf("uvm layer %s: %s: %w", layerDir, TemplateVHDX, err)
	}
	return nil
}

// noSymlinks checks that layerDir/rel is a regular file reached without
// following a symbolic link: the layer's content came from an image, and an
// edit must not land outside it.
func noSymlinks(layerDir, rel string) error {
	path := layerDir
	for _, name := range strings.Split(rel, "/") {
		path = filepath.Join(path, name)
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link", path)
		}
	}
	if fi, _ := os.Lstat(path); !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// saveForRestore reads a file and registers putting its bytes back.
func saveForRestore(u *undo.Stack, path string) error {
	orig, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	u.Push("restore "+path, func(context.Context) error {
		return atomicfile.Write(path, orig, fi.Mode().Perm(), true)
	})
	return nil
}

// ReadBuild reads the build number of a SOFTWARE hive
// (Microsoft\Windows NT\CurrentVersion: CurrentBuild, else
// CurrentBuildNumber), as hcsshim does for the utility VM.
func ReadBuild(softwareHive string) (int, error) {
	h, err := regf.ReadFile(softwareHive)
	if err != nil {
		return 0, fmt.Errorf("reading the utility VM build: %w", err)
	}
	k := h.Lookup(`Microsoft\Windows NT\CurrentVersion`)
	if k == nil {
		return 0, fmt.Errorf("%s: no Microsoft\\Windows NT\\CurrentVersion key", softwareHive)
	}
	for _, name := range []string{"CurrentBuild", "CurrentBuildNumber"} {
		v := k.Value(name)
		if v == nil {
			continue
		}
		s, err := v.Text()
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", softwareHive, name, err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%s: %s %q is not a build number", softwareHive, name, s)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no CurrentBuild or CurrentBuildNumber value", softwareHive)
}

// ReadIDs reads the GPT disk GUID and the data partition's unique GUID of
// a UVM template disk, checking it has the expected layout: exactly two
// partitions, the second a basic data partition.
func ReadIDs(path string) (diskID, partitionID gpt.GUID, err error) {
	d, err := vhdx.Open(path, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		return diskID, partitionID, err
	}
	defer d.Close()
	t, err := gpt.Read(d, d.Size(), d.LogicalSectorSize())
	if err != nil {
		return diskID, partitionID, fmt.Errorf("%s: %w", path, err)
	}
	if len(t.Partitions) != 2 || t.Partitions[1].Type != gpt.BasicData {
		return diskID, partitionID, fmt.Errorf("%s: want 2 partitions, the second basic data; found %d", path, len(t.Partitions))
	}
	return t.DiskID, t.Partitions[1].ID, nil
}

// formatDisk writes the GPT and an NTFS data partition into d.
func formatDisk(ctx context.Context, d *vhdx.Disk, tempDir string) error {
	ss := d.LogicalSectorSize()
	t, err := gpt.New(d.Size(), ss)
	if err != nil {
		return err
	}
	if _, err := t.Add(gpt.MicrosoftReserved, "Microsoft reserved partition", MSRSize); err != nil {
		return err
	}
	data, err := t.Add(gpt.BasicData, "Basic data partition", 0)
	if err != nil {
		return err
	}
	if err := t.Write(d); err != nil {
		return err
	}
	return writeNTFS(ctx, d, data.Offset(ss), data.Size(ss), int64(data.FirstLBA)*ss/ntfsSector, tempDir)
}

// writeNTFS formats a sparse temp file of size bytes with mkntfs and copies
// its data extents to w at off. hidden is the partition's start in NTFS
// sectors, recorded in the boot sector.
func writeNTFS(ctx context.Context, w io.WriterAt, off, size, hidden int64, tempDir string) error {
	f, err := os.CreateTemp(tempDir, "uvm-ntfs-*.img")
	if err != nil {
		return fmt.Errorf("NTFS image: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("NTFS image %s: %w", f.Name(), err)
	}
	cmd := exec.CommandContext(ctx, "mkntfs", "-Q", "-F", "-q",
		"-L", VolumeLabel, "-c", strconv.Itoa(ClusterSize), "-s", strconv.Itoa(ntfsSector),
		"-p", strconv.FormatInt(hidden, 10), "-H", "255", "-S", "63", f.Name())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkntfs %s: %w: %s", f.Name(), err, strings.TrimSpace(string(out)))
	}
	exts, err := sparse.DataExtents(f, size)
	if err != nil {
		return err
	}
	buf := make([]byte, copyChunkSize)
	for _, e := range exts {
		for pos := e.Off; pos < e.Off+e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), e.Off+e.Len-pos)]
			if _, err := f.ReadAt(b, pos); err != nil {
				return fmt.Errorf("reading NTFS image %s at %d: %w", f.Name(), pos, err)
			}
			// A fresh disk reads zeros: skip zero chunks (holes the file
			// system could not report).
			if !zero.Is(b) {
				if _, err := w.WriteAt(b, off+pos); err != nil {
					return fmt.Errorf("writing NTFS at disk offset %d: %w", off+pos, err)
				}
			}
			pos += int64(len(b))
		}
	}
	return nil
}
