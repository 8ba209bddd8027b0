package snapshotter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/pkg/store"
)

const (
	// snapshotsDir, under the store's root, is the snapshotter's.
	snapshotsDir = "snapshots"
	// refFile, inside snapshots/<id>/, holds the chain ID (or private key)
	// of the layer a committed snapshot is, or is being committed to.
	refFile = "layer"
)

// RegisterPinner makes st keep the layers that the snapshots of its root
// use: st.GC and an import's rollback never remove them. It works in any
// process sharing the root — `layervisor gc` beside a running `layervisor
// serve` as well as serve itself — because it reads the snapshots'
// reference files, not the snapshotter's memory: a reference appears
// before its layer is written (see Snapshotter.commitLayer) and goes
// before its snapshot's directory does (discard).
func RegisterPinner(st *store.Store) {
	st.SetPinner("containerd snapshots", pins{dir: filepath.Join(st.Root(), snapshotsDir)})
}

type pins struct{ dir string }

func (p pins) PinnedLayers() (map[digest.Digest]bool, error) {
	used := map[digest.Digest]bool{}
	ents, err := os.ReadDir(p.dir)
	if errors.Is(err, os.ErrNotExist) {
		return used, nil // no snapshotter ever ran on this root
	}
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.dir, e.Name(), refFile))
		if errors.Is(err, os.ErrNotExist) {
			continue // no layer (yet), or removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", e.Name(), err)
		}
		if d, err := digest.Parse(strings.TrimSpace(string(b))); err == nil {
			used[d] = true
		}
	}
	return used, nil
}
