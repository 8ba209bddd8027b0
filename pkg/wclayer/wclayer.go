// Package wclayer imports Windows layer tars the way hcsshim's CIM layer
// writer does: the layer folder and its CIM (cimlayer) and, when a base
// layer carries a utility VM, the utility-VM step (uvmlayer) in the same
// import, so that the edited BCD and SYSTEM hives are the ones in the CIM.
// `image import` and `wclayer import` both go through Import.
package wclayer

import (
	"context"
	"io"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/wclayer/cimlayer"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// CIM is the layer's CIM; default cimlayer.CIMPath(layerDir).
	CIM string
	// ParentCIM is the immediate parent's CIM; default from parents[0].
	ParentCIM string
	// ForceUtilityVM prepares a base layer's utility VM for CIM boot whatever
	// its build (by default only builds above 20348 are: uvmlayer.MinBuild).
	ForceUtilityVM bool
	// TempDir holds the utility-VM step's sparse NTFS image (default
	// os.TempDir()).
	TempDir string
	// Staged says layerDir is a temporary folder that the caller renames
	// into the layer's final place after Import. SystemTemplate.vhdx records
	// its parent's absolute path, so it is then not made by Import: the
	// caller runs FinishUtilityVM on the final folder (when
	// ImportResult.UtilityVM is set).
	Staged bool
	// Progress, when set, is called as the tar is read.
	Progress func(cimlayer.Progress)
}

// ImportResult says what Import did.
type ImportResult struct {
	cimlayer.Stats
	// UtilityVM is set when a base layer's utility VM was prepared for CIM
	// boot; nil when the layer has none or its build is too old.
	UtilityVM *uvmlayer.Result
}

// Import reads a Windows layer tar from r into the layer folder layerDir
// and its CIM; parents are the parent layer folders, top-most first (none
// for a base layer). A base layer with UtilityVM/Files gets its utility VM
// prepared for CIM boot (uvmlayer.Process) before the CIM is written. On
// failure nothing Import made is left.
func Import(ctx context.Context, r io.Reader, layerDir string, parents []string, o ImportOptions) (ImportResult, error) {
	var res ImportResult
	cim := o.CIM
	if cim == "" {
		cim = cimlayer.CIMPath(layerDir)
	}
	opts := &cimlayer.Options{ParentCIM: o.ParentCIM, Progress: o.Progress}
	if len(parents) == 0 {
		rel := CIMRelPath(cim)
		opts.UtilityVM = func(ctx context.Context, dir string) ([]string, error) {
			u, err := uvmlayer.Process(ctx, dir, rel, uvmlayer.Options{Force: o.ForceUtilityVM, TempDir: o.TempDir, DeferTemplate: o.Staged})
			if err != nil {
				return nil, err
			}
			if u.Processed {
				res.UtilityVM = u
			}
			return u.Changed, nil
		}
	}
	st, err := cimlayer.Import(ctx, r, layerDir, cim, parents, opts)
	if err != nil {
		return ImportResult{}, err
	}
	res.Stats = st
	return res, nil
}

// FinishUtilityVM makes SystemTemplate.vhdx for a staged import
// (ImportOptions.Staged) whose base layer folder is now at layerDir, its
// final place. On failure no template is left.
func FinishUtilityVM(layerDir string) error {
	return uvmlayer.MakeTemplate(layerDir)
}

// CIMRelPath is a layer's CIM as its utility VM names it over VMBus: the
// CIM directory's name and the CIM's, as hcsshim computes it
// (`cim-layers\<layer id>.cim`).
func CIMRelPath(cimPath string) string {
	c := filepath.Clean(cimPath)
	return filepath.Base(filepath.Dir(c)) + `\` + filepath.Base(c)
}
