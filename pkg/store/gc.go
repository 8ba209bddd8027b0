package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/scratch"
)

// GCReport says what GC removed or repaired.
type GCReport struct {
	RemovedLayers []digest.Digest        `json:"removedLayers,omitempty"`
	RemovedTemp   []string               `json:"removedTemp,omitempty"`
	RemovedLocks  int                    `json:"removedLocks,omitempty"` // lock files of layers that no longer exist
	Mounts        layers.ReconcileReport `json:"mounts"`
}

// GC reconciles the store after crashes and removes what nothing uses:
// incomplete host mounts are rolled back (complete ones are kept), stray
// mounts and loop devices are released, temp files and half-written layers
// or containers are deleted, and layers no image, container or registered
// LayerPinner refers to are removed. It keeps going past failures and
// returns them joined; when a pinner fails, no layer is removed.
func (s *Store) GC(ctx context.Context) (GCReport, error) {
	var rep GCReport
	var errs []error
	mrep, err := s.Host().Reconcile(ctx, s.root)
	rep.Mounts = mrep
	if err != nil {
		errs = append(errs, fmt.Errorf("reconcile mounts: %w", err))
	}

	lk, err := s.lock()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	defer lk.Release()

	// Work in progress under tmp/: imports hold their layer's lock, so a
	// lock we can take means its import died.
	ents, _ := os.ReadDir(filepath.Join(s.root, "tmp"))
	for _, e := range ents {
		p := filepath.Join(s.root, "tmp", e.Name())
		if strings.HasPrefix(e.Name(), "import-") {
			hex, _, _ := strings.Cut(strings.TrimPrefix(e.Name(), "import-"), "-")
			l, ok, err := flock.TryAcquire(s.layerLockPath(digest.NewDigestFromEncoded(digest.SHA256, hex)))
			if err != nil || !ok {
				continue // import in progress
			}
			l.Release()
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.RemovedTemp = append(rep.RemovedTemp, p)
	}
	// Atomic-write temp files and containers without a record.
	skipTemplates := false
	if tl, ok, err := flock.TryAcquire(filepath.Join(scratch.TemplateDir(s.root), scratch.LockFile)); err == nil && ok {
		defer tl.Release()
	} else {
		skipTemplates = true
	}
	for _, dir := range []string{"images", "containers", "scratch/templates"} {
		if dir == "scratch/templates" && skipTemplates {
			continue
		}
		ents, _ := os.ReadDir(filepath.Join(s.root, dir))
		for _, e := range ents {
			p := filepath.Join(s.root, dir, e.Name())
			orphan := isTemp(e.Name())
			if dir == "containers" && e.IsDir() {
				if _, err := os.Stat(filepath.Join(p, "container.json")); errors.Is(err, os.ErrNotExist) {
					orphan = true
				}
			}
			if !orphan {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.RemovedTemp = append(rep.RemovedTemp, p)
		}
	}
	// A killed run leaves the UVM initramfs it was building in boot/;
	// pkg/uvm writes it locked (atomicfile.CreateTemp), so a file nobody
	// holds locked is a dead build's.
	stale, err := atomicfile.RemoveStale(filepath.Join(s.root, "boot"), ".tmp-initramfs-")
	rep.RemovedTemp = append(rep.RemovedTemp, stale...)
	if err != nil {
		errs = append(errs, fmt.Errorf("boot files: %w", err))
	}

	used, err := s.usedLayers()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	// A layer in an old format is useless to images (import converts it
	// again) but may be mounted by a container: keep only the latter.
	cs, err := s.Containers()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	inContainer := map[digest.Digest]bool{}
	for _, c := range cs {
		for _, id := range c.ChainIDs {
			inContainer[id] = true
		}
	}
	// Layers of containerd snapshots (pinned) may be mounted too.
	pinned, err := s.pinnedLayers()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	for id := range pinned {
		inContainer[id] = true
	}
	ents, _ = os.ReadDir(filepath.Join(s.root, "layers"))
	for _, e := range ents {
		if !e.IsDir() || e.Name() == ".locks" {
			continue
		}
		id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if inContainer[id] || used[id] && s.layerCurrent(id) {
			continue
		}
		l, ok, err := flock.TryAcquire(s.layerLockPath(id))
		if err != nil || !ok {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.root, "layers", e.Name())); err != nil {
			errs = append(errs, err)
			l.Release()
		} else {
			rep.RemovedLayers = append(rep.RemovedLayers, id)
			if err := l.Remove(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := s.gcWindowsLayers(used, &rep); err != nil {
		errs = append(errs, fmt.Errorf("windows layers: %w", err))
	}
	if err := s.removeStaleLayerLocks(&rep); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// removeStaleLayerLocks deletes the lock files of layers that do not exist
// (left by removed layers and failed imports), so layers/.locks does not
// grow forever. A lock held by an import in progress is left alone; flock
// makes a waiter that locked a removed file lock the path afresh.
func (s *Store) removeStaleLayerLocks(rep *GCReport) error {
	ents, err := os.ReadDir(filepath.Join(s.root, "layers", ".locks"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range ents {
		layerDir := filepath.Join(s.root, "layers", e.Name())
		if _, err := os.Stat(layerDir); err == nil {
			continue
		}
		p := filepath.Join(s.root, "layers", ".locks", e.Name())
		l, ok, err := flock.TryAcquire(p)
		if err != nil || !ok {
			continue
		}
		// Checked again under the lock: an import may have finished.
		if _, err := os.Stat(layerDir); err == nil {
			l.Release()
			continue
		}
		if err := l.Remove(); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.RemovedLocks++
	}
	return errors.Join(errs...)
}
