package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
)

// SnapshotsDir is the directory under the root that belongs to the
// containerd snapshotter (package snapshotter). Every snapshot directory in
// it that holds a SnapshotRefFile keeps the layer named there alive: GC
// treats those layers as mounted.
const SnapshotsDir = "snapshots"

// SnapshotRefFile, inside snapshots/<id>/, holds the chain ID of the layer a
// committed snapshot is (or is being committed to).
const SnapshotRefFile = "layer"

// HasLayer reports whether the layer is stored in the current format.
func (s *Store) HasLayer(chainID digest.Digest) bool { return s.layerCurrent(chainID) }

// LayerImage is the path of the layer's image (layer.vhd).
func (s *Store) LayerImage(chainID digest.Digest) string {
	return filepath.Join(s.LayerDir(chainID), layers.LayerFile)
}

// PutLayer converts the layer tar read through open into the layer with the
// given chain ID, unless the store has it already; it reports whether it
// converted. diffID is recorded when known (it may be empty). Like Import,
// concurrent callers for one chain ID do the work once and a failure
// leaves nothing behind.
func (s *Store) PutLayer(ctx context.Context, chainID, diffID digest.Digest, open layerconv.Opener) (bool, error) {
	if err := chainID.Validate(); err != nil {
		return false, fmt.Errorf("layer chain ID %q: %w", chainID, err)
	}
	return s.putLayer(ctx, chainID, diffID, open)
}

// putLayer is the one way a layer enters the store (image import, the
// snapshotter's Commit and differ): under the layer's lock, convert into a
// temp dir whose "import-<hex>-" name lets GC tell a live conversion (its
// lock is held) from a dead one, then fsync and rename into place.
func (s *Store) putLayer(ctx context.Context, chainID, diffID digest.Digest, open layerconv.Opener) (bool, error) {
	if s.layerCurrent(chainID) {
		return false, nil
	}
	lk, err := flock.Acquire(s.layerLockPath(chainID))
	if err != nil {
		return false, err
	}
	defer lk.Release()
	if s.layerCurrent(chainID) {
		return false, nil
	}
	if err := s.removeStaleLayer(chainID); err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "import-"+chainID.Encoded()+"-")
	if err != nil {
		return false, err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, layers.LayerFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// The converter verifies the blob digest and diffID at the end of the
	// stream; on a mismatch the partly written image is discarded with tmp.
	st, err := layerconv.Convert(ctx, open, f)
	if err != nil {
		return false, fmt.Errorf("convert layer %s: %w", chainID, err)
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	info := LayerInfo{ChainID: chainID, DiffID: diffID, Format: layerconv.FormatVersion, Size: fi.Size(), Entries: st.Entries, Created: time.Now().UTC()}
	if err := atomicfile.WriteJSON(filepath.Join(tmp, "layer.json"), info, true); err != nil {
		return false, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return false, err
	}
	crashpoint.Hit("import.layer-converted")
	if err := os.Rename(tmp, s.LayerDir(chainID)); err != nil {
		return false, fmt.Errorf("publish layer %s: %w", chainID, err)
	}
	done = true
	if err := atomicfile.SyncDir(filepath.Join(s.root, "layers")); err != nil {
		return true, err
	}
	crashpoint.Hit("import.layer-published")
	slog.Debug("stored layer", "chainID", chainID, "entries", st.Entries, "bytes", st.FileBytes)
	return true, nil
}

// snapshotLayers returns the chain IDs that snapshots of the containerd
// snapshotter refer to.
func (s *Store) snapshotLayers() map[digest.Digest]bool {
	used := map[digest.Digest]bool{}
	ents, _ := os.ReadDir(filepath.Join(s.root, SnapshotsDir))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(s.root, SnapshotsDir, e.Name(), SnapshotRefFile))
		if err != nil {
			continue
		}
		if d, err := digest.Parse(strings.TrimSpace(string(b))); err == nil {
			used[d] = true
		}
	}
	return used
}

// Layer returns the record of a stored layer.
func (s *Store) Layer(chainID digest.Digest) (LayerInfo, error) {
	var li LayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.LayerDir(chainID), "layer.json"), &li); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return li, fmt.Errorf("layer %s: %w", chainID, ErrNotFound)
		}
		return li, fmt.Errorf("layer %s: %w", chainID, err)
	}
	return li, nil
}
