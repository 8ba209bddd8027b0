package snapshotter

import (
	"context"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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
	notOurs := func(why string, args ...any) (ocispec.Descriptor, error) {
		slog.Debug("differ: passing to the next differ", append([]any{"why", why, "layer", desc.Digest}, args...)...)
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
	chain := unpackChain(key, info.Labels)
	if chain == "" {
		return notOurs("snapshot does not name the layer's chain ID", "key", key)
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
	if li, err := d.sn.store.Layer(chain); err == nil && d.sn.store.HasLayer(chain) && li.DiffID != "" && (want == "" || want == li.DiffID) {
		// Stored already (image import, another namespace): nothing to do.
		if err := d.markApplied(id, chain); err != nil {
			return ocispec.Descriptor{}, err
		}
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: li.DiffID}, nil
	}

	var got digest.Digest
	var size int64
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
		return &diffReader{r: dr, h: digest.SHA256.Hash(), want: want, done: func(dg digest.Digest, n int64) { got, size = dg, n },
			close: func() error { dr.Close(); return f.Close() }}, nil
	}
	// The reference first, so that gc keeps the layer from the start.
	if err := d.sn.writeRef(id, chain); err != nil {
		return ocispec.Descriptor{}, err
	}
	if _, err := d.sn.store.PutLayer(ctx, chain, want, open); err != nil {
		d.sn.removeRef(id)
		return ocispec.Descriptor{}, fmt.Errorf("apply layer %s to snapshot %q: %w", desc.Digest, key, err)
	}
	if got == "" { // converted concurrently by someone else: hash it
		rc, err := open()
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if err := d.markApplied(id, chain); err != nil {
		return ocispec.Descriptor{}, err
	}
	slog.Debug("differ: layer converted", "chainID", chain, "diffID", got)
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: got, Size: size}, nil
}

func (d *Differ) markApplied(id string, chain digest.Digest) error {
	if err := d.sn.writeRef(id, chain); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(d.sn.dir(id), appliedFile), []byte(chain.String()+"\n"), 0o600, true)
}

// diffReader hashes the uncompressed layer; at the end it checks the diff
// ID containerd expects, if known.
type diffReader struct {
	r     io.Reader
	h     hash.Hash
	n     int64
	want  digest.Digest
	done  func(digest.Digest, int64)
	close func() error
}

func (r *diffReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF {
		got := digest.NewDigest(digest.SHA256, r.h)
		if r.want != "" && got != r.want {
			return n, fmt.Errorf("layer content is %s, want diff ID %s", got, r.want)
		}
		r.done(got, r.n)
	}
	return n, err
}

func (r *diffReader) Close() error { return r.close() }

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
