package store

import (
	"fmt"
	"maps"
	"slices"

	digest "github.com/opencontainers/go-digest"
)

// LayerPinner is a user of the store's layers that the store keeps no
// record of: the containerd snapshotter, whose snapshots are layers
// (package snapshotter registers one). GC, and an import's rollback, keep
// every layer a registered pinner names, as they keep those of images and
// containers.
//
// A pinner names a layer from before it is written under its key (before
// PutLayer, or from PutPrivateLayer's reserve) until its last use is gone,
// and answers in any process that shares the root: `layervisor gc` runs
// beside `layervisor serve`.
type LayerPinner interface {
	PinnedLayers() (map[digest.Digest]bool, error)
}

// SetPinner registers p under name, replacing the pinner registered under
// that name (nil removes it). Callers register their pinners right after
// Open, before anything may run GC.
func (s *Store) SetPinner(name string, p LayerPinner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p == nil {
		delete(s.pinners, name)
		return
	}
	if s.pinners == nil {
		s.pinners = map[string]LayerPinner{}
	}
	s.pinners[name] = p
}

// pinnedLayers returns the layers the registered pinners name. On error
// the caller removes no layer: what a pinner could not say may be in use.
func (s *Store) pinnedLayers() (map[digest.Digest]bool, error) {
	s.mu.Lock()
	ps := maps.Clone(s.pinners)
	s.mu.Unlock()
	pinned := map[digest.Digest]bool{}
	for _, name := range slices.Sorted(maps.Keys(ps)) {
		ids, err := ps[name].PinnedLayers()
		if err != nil {
			return nil, fmt.Errorf("layers pinned by %s: %w", name, err)
		}
		maps.Copy(pinned, ids)
	}
	return pinned, nil
}
