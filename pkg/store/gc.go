package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/scratch"
)

// GCReport says what GC removed or repaired.
type GCReport struct {
	RemovedLayers []digest.Digest        `json:"removedLayers,omitempty"`
	RemovedTemp   []string               `json:"removedTemp,omitempty"`
	Mounts        layers.ReconcileReport `json:"mounts"`
}

// GC reconciles the store after crashes and removes what nothing uses:
// incomplete host mounts are rolled back (complete ones are kept), stray
// mounts and loop devices are released, temp files and half-written layers
// or containers are deleted, and layers no image or container refers to are
// removed. It keeps going past failures and returns them joined.
func (s *Store) GC(ctx context.Context) (GCReport, error) {
	var rep GCReport
	var errs []error
	mrep, err := s.host().Reconcile(ctx, s.root)
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

	used, err := s.usedLayers()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	ents, _ = os.ReadDir(filepath.Join(s.root, "layers"))
	for _, e := range ents {
		if !e.IsDir() || e.Name() == ".locks" {
			continue
		}
		id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if used[id] {
			continue
		}
		l, ok, err := flock.TryAcquire(s.layerLockPath(id))
		if err != nil || !ok {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.root, "layers", e.Name())); err != nil {
			errs = append(errs, err)
		} else {
			rep.RemovedLayers = append(rep.RemovedLayers, id)
		}
		l.Release()
	}
	return rep, errors.Join(errs...)
}
