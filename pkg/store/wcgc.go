package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/cimfs"
)

// gcWindowsLayers removes the Windows layers no image uses and what a
// crashed Windows import left in cim-layers: temp files, and CIMs whose
// layer folder never appeared. It runs only while no Windows import does
// (they hold wclayers/.lock), so no fork is reading a parent it removes.
func (s *Store) gcWindowsLayers(used map[digest.Digest]bool, rep *GCReport) error {
	dir := filepath.Join(s.root, "wclayers")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	wl, ok, err := flock.TryAcquire(filepath.Join(dir, ".lock"))
	if err != nil || !ok {
		return err
	}
	defer wl.Release()
	cimDir := filepath.Join(dir, "cim-layers")
	var doomed []digest.Digest
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() || e.Name() == "cim-layers" {
			continue
		}
		id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if !used[id] {
			doomed = append(doomed, id)
		}
	}
	cims, _ := os.ReadDir(cimDir)
	for _, e := range cims {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			p := filepath.Join(cimDir, name)
			if err := os.Remove(p); err == nil {
				rep.RemovedTemp = append(rep.RemovedTemp, p)
			}
		case strings.HasSuffix(name, ".cim"):
			hex := strings.TrimSuffix(name, ".cim")
			if _, err := os.Stat(filepath.Join(dir, hex)); errors.Is(err, os.ErrNotExist) {
				doomed = append(doomed, digest.NewDigestFromEncoded(digest.SHA256, hex))
			}
		}
	}
	var errs []error
	for _, id := range doomed {
		if err := s.removeWindowsLayer(id); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.RemovedLayers = append(rep.RemovedLayers, id)
	}
	if err := sweepRegionFiles(cimDir, rep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeWindowsLayer removes a layer's .cim and its folder, under the
// layer's lock. Its region files go in sweepRegionFiles: a fork's CIM can
// only be opened (to name them) while its parents' files are there.
func (s *Store) removeWindowsLayer(id digest.Digest) error {
	lk, ok, err := flock.TryAcquire(s.layerLockPath(id))
	if err != nil || !ok {
		return fmt.Errorf("windows layer %s: busy", id)
	}
	err = os.Remove(s.WindowsLayerCIM(id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		lk.Release()
		return fmt.Errorf("windows layer %s: %w", id, err)
	}
	if err := os.RemoveAll(s.WindowsLayerDir(id)); err != nil {
		lk.Release()
		return err
	}
	return lk.Remove()
}

// sweepRegionFiles removes the region and object-id files that no
// remaining CIM lists, its own or as a parent's. If any CIM cannot be
// read, nothing is swept: a file it needs could look unreferenced.
func sweepRegionFiles(cimDir string, rep *GCReport) error {
	ents, err := os.ReadDir(cimDir)
	if err != nil {
		return nil
	}
	referenced := map[string]bool{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".cim") {
			continue
		}
		img, err := cimfs.Open(filepath.Join(cimDir, e.Name()))
		if err != nil {
			return fmt.Errorf("region files kept: %w", err)
		}
		referenced[img.Own.ID.String()] = true
		for _, p := range img.Parents {
			referenced[p.ID.String()] = true
		}
		img.Close()
	}
	var errs []error
	for _, e := range ents {
		kind, rest, ok := strings.Cut(e.Name(), "_")
		if !ok || (kind != "region" && kind != "objectid") {
			continue
		}
		id, _, ok := strings.Cut(rest, "_")
		if !ok || referenced[id] {
			continue
		}
		p := filepath.Join(cimDir, e.Name())
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.RemovedTemp = append(rep.RemovedTemp, p)
	}
	return errors.Join(errs...)
}

// windowsLayers lists the stored Windows layers.
func (s *Store) windowsLayers() ([]WindowsLayerInfo, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "wclayers"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []WindowsLayerInfo
	for _, e := range ents {
		if !e.IsDir() || e.Name() == "cim-layers" {
			continue
		}
		var li WindowsLayerInfo
		if err := atomicfile.ReadJSON(filepath.Join(s.root, "wclayers", e.Name(), "layer.json"), &li); err != nil {
			continue // an import in progress, or a leftover gc removes
		}
		out = append(out, li)
	}
	return out, nil
}
