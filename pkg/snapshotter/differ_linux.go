package snapshotter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/logctx"
)

// appliedFile, in an active snapshot's directory, names the layer the
// differ wrote for it; Commit then records that layer as is.
const appliedFile = "applied"

// Differ converts layer blobs straight into layer images of the store when
// containerd unpacks into one of the snapshotter's active snapshots
// (containerd ≥1.7, proxy differ). Anything else gets "not implemented",
// so containerd's diff service falls through to the next differ.
type Differ struct {
	sn *Snapshotter
	// content is containerd's content store directory
	// (<containerd root>/io.containerd.content.v1.content): blobs are read
	// from it directly, which needs no namespace (not always forwarded to
	// proxy differs).
	content string
}

var (
	_ diff.Applier  = (*Differ)(nil)
	_ diff.Comparer = (*Differ)(nil)
)

// NewDiffer returns the differ of the snapshotter, reading blobs from
// containerd's content store directory.
func NewDiffer(sn *Snapshotter, contentDir string) *Differ {
	return &Differ{sn: sn, content: contentDir}
}

// Compare is not implemented: containerd's own differs make diffs.
func (d *Differ) Compare(ctx context.Context, lower, upper []mount.Mount, opts ...diff.Opt) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, fmt.Errorf("layervisor differ does not compare: %w", errdefs.ErrNotImplemented)
}

// Apply converts the layer desc into the layer image of the unpack snapshot
// that mounts belong to and returns the layer's diff ID.
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	ctx = logCtx(ctx, slog.String("layer", desc.Digest.String()))
	notOurs := func(why string, args ...any) (ocispec.Descriptor, error) {
		slog.DebugContext(ctx, "differ: passing to the next differ", append([]any{"why", why}, args...)...)
		return ocispec.Descriptor{}, fmt.Errorf("layervisor differ: %s: %w", why, errdefs.ErrNotImplemented)
	}
	id := d.sn.snapshotOfMounts(mounts)
	if id == "" {
		return notOurs("mounts are not a layervisor snapshot")
	}
	key, info, err := d.sn.byID(ctx, id)
	if err != nil || info.Kind != snapshots.KindActive {
		return notOurs("not an active snapshot", "id", id)
	}
	ctx = logctx.With(ctx, slog.String("key", key))
	chain := unpackChain(key, info.Labels)
	if chain == "" {
		return notOurs("snapshot does not name the layer's chain ID")
	}
	comp, err := images.DiffCompression(ctx, desc.MediaType)
	if err != nil || !images.IsLayerType(desc.MediaType) {
		return notOurs("media type " + desc.MediaType)
	}
	if err := desc.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("layer digest %q: %w", desc.Digest, err)
	}
	blob := filepath.Join(d.content, "blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	if _, err := os.Stat(blob); err != nil {
		return notOurs("blob not in "+d.content, "err", err)
	}
	want := digest.Digest(info.Labels["containerd.io/snapshot/diff-id"])
	if want.Validate() != nil {
		want = ""
	}
	// The chain ID in the key is a claim: the layer is stored under it only
	// if chain = ChainID(parent, the blob's diff ID as computed from its
	// bytes), which PutLayer checks before publishing. That needs the
	// parent's chain ID, which only a verified parent layer has.
	parent, err := d.sn.parentChain(ctx, info)
	if err != nil {
		return notOurs("the parent layer is not verified", "err", err)
	}
	if li, err := d.sn.store.Layer(chain); err == nil && d.sn.store.HasLayer(chain) && (want == "" || want == li.DiffID) {
		// Stored and verified already (image import, another namespace):
		// nothing to do. The diff ID is bound to the chain ID by the hash,
		// whatever parent it was verified with.
		if err := d.markApplied(id, chain); err != nil {
			return ocispec.Descriptor{}, err
		}
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: li.DiffID}, nil
	}

	var size atomic.Int64
	open := func() (io.ReadCloser, error) {
		f, err := os.Open(blob)
		if err != nil {
			return nil, err
		}
		dr, err := compression.DecompressStream(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("layer %s (%s): %w", desc.Digest, comp, err)
		}
		size.Store(0) // a second pass counts again
		return &countReader{r: dr, n: &size, close: func() error { dr.Close(); return f.Close() }}, nil
	}
	// The reference first, so that gc keeps the layer from the start.
	if err := d.sn.writeRef(id, chain); err != nil {
		return ocispec.Descriptor{}, err
	}
	converted, err := d.sn.store.PutLayer(ctx, chain, parent, want, open)
	if err != nil {
		d.sn.removeRef(id)
		return ocispec.Descriptor{}, fmt.Errorf("apply layer %s to snapshot %q: %w", desc.Digest, key, err)
	}
	li, err := d.sn.store.Layer(chain)
	if err != nil {
		d.sn.removeRef(id)
		return ocispec.Descriptor{}, err
	}
	if !converted {
		size.Store(0) // converted concurrently by someone else, verified
	}
	if err := d.markApplied(id, chain); err != nil {
		return ocispec.Descriptor{}, err
	}
	slog.DebugContext(ctx, "differ: layer converted", "chainID", chain, "diffID", li.DiffID, "converted", converted)
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: li.DiffID, Size: size.Load()}, nil
}

func (d *Differ) markApplied(id string, chain digest.Digest) error {
	if err := d.sn.writeRef(id, chain); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(d.sn.dir(id), appliedFile), []byte(chain.String()+"\n"), 0o600, true)
}

// countReader counts the bytes of the uncompressed layer.
type countReader struct {
	r     io.Reader
	n     *atomic.Int64
	close func() error
}

func (r *countReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (r *countReader) Close() error { return r.close() }

// parentChain is the chain ID of the layer below an unpack snapshot's: its
// parent's layer, which must be verified (a private layer's key is no
// chain ID), or, in a parallel unpack whose parent comes only at Commit,
// the parent-chain-id label. It is "" for a base layer.
func (s *Snapshotter) parentChain(ctx context.Context, info snapshots.Info) (digest.Digest, error) {
	if info.Parent == "" {
		if l := info.Labels["containerd.io/snapshot/parent-chain-id"]; l != "" {
			d, err := digest.Parse(l)
			if err != nil {
				return "", fmt.Errorf("parent-chain-id label %q: %w", l, err)
			}
			return d, nil
		}
		return "", nil
	}
	var pid string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		pid, _, _, err = storage.GetInfo(ctx, info.Parent)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("parent %q: %w", info.Parent, err)
	}
	chain, err := s.chainOf(pid)
	if err != nil {
		return "", err
	}
	if !s.store.HasLayer(chain) {
		return "", fmt.Errorf("parent %q: layer %s is private or unverified", info.Parent, chain)
	}
	return chain, nil
}

// unpackChain is the chain ID an unpack snapshot is for: containerd's key
// is "<namespace>/<n>/extract-<random> <chain ID>", and 2.x also sets the
// snapshot.ref label.
func unpackChain(key string, labels map[string]string) digest.Digest {
	if i := strings.LastIndex(key, " "); i >= 0 && strings.Contains(key, "extract-") {
		if d, err := digest.Parse(key[i+1:]); err == nil && d.Algorithm() == digest.SHA256 {
			return d
		}
	}
	if d, err := digest.Parse(labels[snapshots.LabelSnapshotRef]); err == nil && d.Algorithm() == digest.SHA256 {
		return d
	}
	return ""
}

// snapshotOfMounts returns the ID of the snapshot whose upper directory the
// mounts write to, or "".
func (s *Snapshotter) snapshotOfMounts(mounts []mount.Mount) string {
	if len(mounts) != 1 {
		return ""
	}
	m := mounts[0]
	upper := ""
	switch m.Type {
	case "bind":
		upper = m.Source
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
	}
	if filepath.Base(upper) != "fs" || filepath.Dir(filepath.Dir(upper)) != s.root {
		return ""
	}
	return filepath.Base(filepath.Dir(upper))
}

// byID finds a snapshot's key and info from its ID.
func (s *Snapshotter) byID(ctx context.Context, id string) (key string, info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		k, ok := ids[id]
		if !ok {
			return fmt.Errorf("snapshot id %s: %w", id, errdefs.ErrNotFound)
		}
		key = k
		_, info, _, err = storage.GetInfo(ctx, k)
		return err
	})
	return key, info, err
}
