package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/ociimage"
	"github.com/layervisor/layervisor/pkg/wclayer"
	"github.com/layervisor/layervisor/pkg/wclayer/cimlayer"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

// Windows layers live beside each other as hcsshim lays out CIM layers:
//
//	wclayers/<chain-id-hex>/                    layer folder (std files) + layer.json
//	wclayers/cim-layers/<chain-id-hex>.cim      its CIM, forked from its parent's,
//	wclayers/cim-layers/{region,objectid}_*     with every layer's region files
//
// They share the per-layer locks and tmp/ naming of Linux layers.

// WindowsFormat is the format version of stored Windows (CIM) layers.
const WindowsFormat = 1

// WindowsLayerInfo is layer.json of a Windows layer.
type WindowsLayerInfo struct {
	LayerInfo
	Parent   digest.Digest `json:"parent,omitempty"` // chain ID of the layer its CIM forks
	CIM      string        `json:"cim"`              // relative to the layer folder's parent
	StdFiles int           `json:"stdFiles"`         // files kept in the folder
	// UtilityVM is set for a base layer whose utility VM was prepared for
	// CIM boot (SystemTemplateBase.vhdx, SystemTemplate.vhdx, BCD, SYSTEM).
	UtilityVM *UtilityVMInfo `json:"utilityVM,omitempty"`
}

// UtilityVMInfo describes a prepared utility VM of a base layer.
type UtilityVMInfo struct {
	Build       int    `json:"build"`
	DiskID      string `json:"diskID"`      // GPT disk GUID of SystemTemplateBase.vhdx
	PartitionID string `json:"partitionID"` // its data partition's unique GUID
}

// UtilityVMTemplate returns the SystemTemplate.vhdx of an image's base
// layer: the parent of each Windows utility VM's sandbox.
func (s *Store) UtilityVMTemplate(ref string) (string, error) {
	im, err := s.Image(ref)
	if err != nil {
		return "", err
	}
	if !IsWindows(im.Platform) || len(im.ChainIDs) == 0 {
		return "", fmt.Errorf("image %s (%s) is not a Windows image", ref, im.Platform)
	}
	base := im.ChainIDs[0]
	var li WindowsLayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.WindowsLayerDir(base), "layer.json"), &li); err != nil {
		return "", fmt.Errorf("image %s: base layer %s: %w", ref, base, err)
	}
	if li.UtilityVM == nil {
		return "", fmt.Errorf("image %s: its base layer has no utility VM prepared for CIM boot (none in the layer, or a build of 20348 or older: import with --force-uvm)", ref)
	}
	return filepath.Join(s.WindowsLayerDir(base), filepath.FromSlash(uvmlayer.TemplateVHDX)), nil
}

// IsWindows reports whether an os/arch[/variant] platform is Windows.
func IsWindows(platform string) bool {
	return platform == "windows" || strings.HasPrefix(platform, "windows/")
}

// WindowsLayerDir is the folder of a Windows layer.
func (s *Store) WindowsLayerDir(chainID digest.Digest) string {
	return filepath.Join(s.root, "wclayers", chainID.Encoded())
}

// WindowsLayerCIM is the CIM of a Windows layer (cimlayer.CIMPath of its folder).
func (s *Store) WindowsLayerCIM(chainID digest.Digest) string {
	return cimlayer.CIMPath(s.WindowsLayerDir(chainID))
}

func (s *Store) windowsLayerCurrent(chainID digest.Digest) bool {
	var li WindowsLayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.WindowsLayerDir(chainID), "layer.json"), &li); err != nil {
		return false
	}
	_, err := os.Stat(s.WindowsLayerCIM(chainID))
	return err == nil && li.Format == WindowsFormat
}

// importWindows stores each layer of a Windows image as a CIM layer keyed
// by chain ID, base first (each CIM forks its parent's), reusing layers
// already stored, and records the image. On failure the layers this call
// made are removed again.
func (s *Store) importWindows(ctx context.Context, img *ociimage.Image, path, name string, opts ImportOptions) (res ImportResult, err error) {
	rec := Image{Name: name, ManifestDigest: img.ManifestDigest, ConfigDigest: img.ConfigDigest,
		Platform: img.Platform, Imported: time.Now().UTC()}
	if existing, err := s.Image(name); err == nil && existing.ManifestDigest != img.ManifestDigest {
		return res, fmt.Errorf("image name %q is already taken by %s (importing %s from %s): %w",
			name, existing.ManifestDigest, img.ManifestDigest, path, ErrExists)
	}
	if err := os.MkdirAll(filepath.Join(s.root, "wclayers", "cim-layers"), 0o700); err != nil {
		return res, err
	}
	// A fork reads its parent's region files by name, so a rollback must not
	// remove a layer another import is forking from: Windows imports take
	// turns (each one's layers are sequential anyway).
	wl, err := flock.Acquire(filepath.Join(s.root, "wclayers", ".lock"))
	if err != nil {
		return res, err
	}
	defer wl.Release()
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	var parents []string // top-most first
	for i, l := range img.Layers {
		made, size, err := s.ensureWindowsLayer(ctx, img, i, parents, opts.ForceUtilityVM, opts.Progress)
		if err != nil {
			return res, fmt.Errorf("import %s: layer %d (%s): %w", path, i+1, l.Name(), err)
		}
		if made {
			res.Converted++
			u.Push("remove layer "+l.ChainID.String(), func(context.Context) error { return s.removeUnusedWindowsLayer(l.ChainID) })
		} else {
			res.Reused++
		}
		rec.ChainIDs = append(rec.ChainIDs, l.ChainID)
		rec.DiffIDs = append(rec.DiffIDs, l.DiffID)
		rec.Size += size
		parents = append([]string{s.WindowsLayerDir(l.ChainID)}, parents...)
	}
	lk, err := s.lock()
	if err != nil {
		return res, err
	}
	defer lk.Release()
	if existing, err := s.Image(name); err == nil && existing.ManifestDigest != rec.ManifestDigest {
		return res, fmt.Errorf("image name %q is already taken by %s: %w", name, existing.ManifestDigest, ErrExists)
	}
	if err := atomicfile.WriteJSON(s.imagePath(name), rec, true); err != nil {
		return res, err
	}
	u.Commit()
	res.Image = rec
	return res, nil
}

// ensureWindowsLayer imports layer i unless it is stored; it reports
// whether it did and the layer's data size.
func (s *Store) ensureWindowsLayer(ctx context.Context, img *ociimage.Image, i int, parents []string, forceUVM bool, progress func(ImportProgress)) (made bool, size int64, err error) {
	l := img.Layers[i]
	report := func(state string, n int64) {
		if progress != nil {
			progress(ImportProgress{Layer: i + 1, Layers: len(img.Layers), ChainID: l.ChainID, Bytes: n, Total: l.Size, State: state})
		}
	}
	info := filepath.Join(s.WindowsLayerDir(l.ChainID), "layer.json")
	stored := func() (bool, int64) {
		var li WindowsLayerInfo
		if !s.windowsLayerCurrent(l.ChainID) || atomicfile.ReadJSON(info, &li) != nil {
			return false, 0
		}
		return true, li.Size
	}
	if ok, n := stored(); ok {
		report("exists", 0)
		return false, n, nil
	}
	lk, err := flock.Acquire(s.layerLockPath(l.ChainID))
	if err != nil {
		return false, 0, err
	}
	defer lk.Release()
	if ok, n := stored(); ok {
		report("exists", 0)
		return false, n, nil
	}
	// Whatever a crashed import left (a CIM without its folder, a folder
	// without layer.json) goes: we hold the layer's lock.
	dir, cim := s.WindowsLayerDir(l.ChainID), s.WindowsLayerCIM(l.ChainID)
	if err := os.RemoveAll(dir); err != nil {
		return false, 0, err
	}
	if err := cimlayer.RemoveCIM(cim); err != nil {
		return false, 0, fmt.Errorf("remove stale CIM %s: %w", cim, err)
	}
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "import-"+l.ChainID.Encoded()+"-")
	if err != nil {
		return false, 0, err
	}
	defer os.RemoveAll(tmp)
	rc, err := img.OpenLayer(ctx, i)
	if err != nil {
		return false, 0, err
	}
	defer rc.Close()
	// Built in tmp and renamed into place: Staged leaves SystemTemplate.vhdx,
	// which names its parent by absolute path, for after the rename.
	opts := wclayer.ImportOptions{CIM: cim, ForceUtilityVM: forceUVM, TempDir: tmp, Staged: true}
	if progress != nil {
		opts.Progress = func(p cimlayer.Progress) { report("converting", p.Bytes) }
	}
	work := filepath.Join(tmp, "layer")
	res, err := wclayer.Import(ctx, rc, work, parents, opts)
	if err != nil {
		return false, 0, err
	}
	st := res.Stats
	u.Push("remove CIM "+cim, func(context.Context) error { return cimlayer.RemoveCIM(cim) })
	// The stream checks the blob digest and diffID only at its end, past
	// the tar's end-of-archive marker.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return false, 0, err
	}
	li := WindowsLayerInfo{
		LayerInfo: LayerInfo{ChainID: l.ChainID, DiffID: l.DiffID, Format: WindowsFormat, Size: st.Bytes,
			Entries: st.Entries, Created: time.Now().UTC()},
		CIM: filepath.Join("cim-layers", filepath.Base(cim)), StdFiles: st.StdFiles,
	}
	if i > 0 {
		li.Parent = img.Layers[i-1].ChainID
	}
	if res.UtilityVM != nil {
		li.UtilityVM = &UtilityVMInfo{Build: res.UtilityVM.Build, DiskID: res.UtilityVM.DiskID.String(), PartitionID: res.UtilityVM.PartitionID.String()}
	}
	// The folder goes into place first, without layer.json: only there can
	// the template name its parent. layer.json, written last, is what makes
	// the layer stored; a crash before it leaves a folder that the next
	// import of the layer (under the layer's lock) or gc removes.
	if err := atomicfile.Publish(work, dir); err != nil {
		return false, 0, fmt.Errorf("publish layer %s: %w", l.ChainID, err)
	}
	u.Push("remove layer folder "+dir, func(context.Context) error { return os.RemoveAll(dir) })
	if res.UtilityVM != nil {
		if err := wclayer.FinishUtilityVM(dir); err != nil {
			return false, 0, fmt.Errorf("layer %s: %w", l.ChainID, err)
		}
	}
	if err := atomicfile.WriteJSON(filepath.Join(dir, "layer.json"), li, true); err != nil {
		return false, 0, err
	}
	u.Commit()
	report("done", st.Bytes)
	slog.Debug("imported Windows layer", "chainID", l.ChainID, "entries", st.Entries, "bytes", st.Bytes)
	return true, st.Bytes, nil
}

// removeUnusedWindowsLayer rolls back a layer an import made, unless an
// image refers to it by now.
func (s *Store) removeUnusedWindowsLayer(chainID digest.Digest) error {
	lk, err := s.lock()
	if err != nil {
		return err
	}
	defer lk.Release()
	used, err := s.usedLayers()
	if err != nil {
		return err
	}
	if used[chainID] {
		return nil
	}
	return errors.Join(cimlayer.RemoveCIM(s.WindowsLayerCIM(chainID)), os.RemoveAll(s.WindowsLayerDir(chainID)))
}
