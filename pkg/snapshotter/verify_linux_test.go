package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/store"
)

// blobIn writes a gzipped layer tar of files into content (a containerd
// content directory) and returns its descriptor and diff ID.
func blobIn(t *testing.T, content string, files map[string]string) (ocispec.Descriptor, digest.Digest) {
	t.Helper()
	blob, diffID := gzipTar(t, files)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	p := filepath.Join(content, "blobs", "sha256", desc.Digest.Encoded())
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	return desc, diffID
}

// writeInto mounts an active snapshot's mounts and writes files into it,
// as containerd's walking differ (or a client) does.
func writeInto(t *testing.T, ms []mount.Mount, files map[string]string) {
	t.Helper()
	withMounted(t, ms, func(dir string) {
		for p, c := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// assertView checks what a view of the committed snapshot name shows.
func assertView(t *testing.T, sn *Snapshotter, name string, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	key := "view-of-" + name
	v, err := sn.View(ctx, key, name)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(ctx, key)
	withMounted(t, v, func(dir string) {
		for p, c := range want {
			b, err := os.ReadFile(filepath.Join(dir, p))
			switch {
			case c == "" && !os.IsNotExist(err):
				t.Errorf("%s: %s is there (%q, %v), want it absent", name, p, b, err)
			case c != "" && (err != nil || string(b) != c):
				t.Errorf("%s: %s = %q, %v; want %q", name, p, b, err, c)
			}
		}
	})
}

// TestUnverifiedCommitIsNotShared is issue #20's attack on the backend, as
// containerd's metadata layer passes it on (keys "<namespace>/<n>/<name>"):
// a client of namespace evil prepares a snapshot, writes into it and
// commits it under the chain ID of a real image's base layer. Neither a
// containerd 1.6 unpack (walking differ, then Commit under that chain ID)
// nor a 2.x one (Prepare naming the layer, then the differ) of namespace
// good may see that content, nor may image import reuse it; the evil
// snapshot itself keeps what its client wrote.
func TestUnverifiedCommitIsNotShared(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	content := t.TempDir()
	real := map[string]string{"etc/hello": "real"}
	desc, diffID := blobIn(t, content, real)
	chain := diffID // a base layer's chain ID is its diff ID

	evil := map[string]string{"etc/hello": "evil", "evil-marker": "x"}
	ms, err := sn.Prepare(ctx, "evil/1/evil-key", "")
	if err != nil {
		t.Fatal(err)
	}
	writeInto(t, ms, evil)
	if err := sn.Commit(ctx, "evil/2/"+chain.String(), "evil/1/evil-key"); err != nil {
		t.Fatal(err)
	}
	if st.HasLayer(chain) {
		t.Errorf("the evil commit was adopted as layer %s", chain)
	}
	if _, err := st.Layer(chain); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the store has something under the claimed chain ID: %v", err)
	}
	assertView(t, sn, "evil/2/"+chain.String(), evil)

	// containerd 1.6: its walking differ extracts the real layer into an
	// unpack snapshot, which is committed under the chain ID.
	ms, err = sn.Prepare(ctx, "good/3/extract-1 "+chain.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	writeInto(t, ms, real)
	if err := sn.Commit(ctx, "good/4/"+chain.String(), "good/3/extract-1 "+chain.String()); err != nil {
		t.Fatal(err)
	}
	assertView(t, sn, "good/4/"+chain.String(), map[string]string{"etc/hello": "real", "evil-marker": ""})

	// containerd 2.x: Prepare names the layer; the store has nothing
	// verified under it, so it unpacks, through the differ.
	ref := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain.String()})
	key := "other/5/extract-2 " + chain.String()
	ms, err = sn.Prepare(ctx, key, "", ref)
	if errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare naming %s answered %v: an unverified layer was adopted", chain, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	got, err := NewDiffer(sn, content).Apply(ctx, desc, ms)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != diffID {
		t.Errorf("Apply returned diff ID %s, want %s", got.Digest, diffID)
	}
	if err := sn.Commit(ctx, "other/6/"+chain.String(), key); err != nil {
		t.Fatal(err)
	}
	assertView(t, sn, "other/6/"+chain.String(), map[string]string{"etc/hello": "real", "evil-marker": ""})
	li, err := st.Layer(chain)
	if err != nil || !li.Verified || li.DiffID != diffID {
		t.Fatalf("the differ's layer: %+v, %v; want verified with diff ID %s", li, err, diffID)
	}
	// Verified now, it is shared: the next Prepare naming it adopts it.
	if _, err := sn.Prepare(ctx, "third/7/extract-3 "+chain.String(), "", ref); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Prepare naming the verified layer: %v, want already exists", err)
	}
	// The evil snapshot still has its own content.
	assertView(t, sn, "evil/2/"+chain.String(), evil)
}

// TestDifferRefusesForgedChain: the differ stores a blob under the chain
// ID the unpack key names only if that is the chain ID of the blob's bytes
// over the parent's layer; a wrong one fails Apply and stores nothing.
func TestDifferRefusesForgedChain(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	content := t.TempDir()
	d := NewDiffer(sn, content)
	desc0, diff0 := blobIn(t, content, map[string]string{"a": "base"})
	desc1, diff1 := blobIn(t, content, map[string]string{"b": "top"})
	forged := digest.FromString("someone else's layer")

	// A base layer under a chain ID that is not its diff ID.
	ms, err := sn.Prepare(ctx, "ns/1/extract-1 "+forged.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc0, ms); !errors.Is(err, store.ErrChainMismatch) {
		t.Errorf("Apply under a forged chain ID: %v, want %v", err, store.ErrChainMismatch)
	}
	if _, err := st.Layer(forged); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("something was stored under the forged chain ID: %v", err)
	}

	// A real base, then a top layer: its chain ID must be over the base's.
	ms, err = sn.Prepare(ctx, "ns/2/extract-2 "+diff0.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc0, ms); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "ns/3/"+diff0.String(), "ns/2/extract-2 "+diff0.String()); err != nil {
		t.Fatal(err)
	}
	// The top layer's diff ID as if it were a base layer: wrong over a parent.
	ms, err = sn.Prepare(ctx, "ns/4/extract-3 "+diff1.String(), "ns/3/"+diff0.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc1, ms); !errors.Is(err, store.ErrChainMismatch) {
		t.Errorf("Apply of a top layer under its diff ID: %v, want %v", err, store.ErrChainMismatch)
	}
	if st.HasLayer(diff1) {
		t.Errorf("the top layer was stored as a base layer")
	}
	top := store.ChainID(diff0, diff1)
	ms, err = sn.Prepare(ctx, "ns/5/extract-4 "+top.String(), "ns/3/"+diff0.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc1, ms); err != nil {
		t.Fatalf("Apply of the top layer under its chain ID: %v", err)
	}
	if li, err := st.Layer(top); err != nil || !li.Verified || li.Parent != diff0 || li.DiffID != diff1 {
		t.Errorf("top layer record %+v, %v", li, err)
	}
}

// TestDifferPassesOverPrivateParent: on a parent whose layer is private,
// the chain ID cannot be checked, so the differ leaves the layer to the
// walking differ (whose commit stays private too).
func TestDifferPassesOverPrivateParent(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	content := t.TempDir()
	desc, diffID := blobIn(t, content, map[string]string{"b": "top"})
	ms, err := sn.Prepare(ctx, "ns/1/a", "")
	if err != nil {
		t.Fatal(err)
	}
	writeInto(t, ms, map[string]string{"a": "A"})
	base := digest.FromString("claimed base")
	if err := sn.Commit(ctx, "ns/2/"+base.String(), "ns/1/a"); err != nil {
		t.Fatal(err)
	}
	top := store.ChainID(base, diffID)
	ms, err = sn.Prepare(ctx, "ns/3/extract-1 "+top.String(), "ns/2/"+base.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewDiffer(sn, content).Apply(ctx, desc, ms); !errdefs.IsNotImplemented(err) {
		t.Errorf("Apply over a private parent: %v, want not implemented", err)
	}
}

// TestLayerMountIdentity: a layer's mount is the host's shared mount of
// its image (layers.Host, short names in one directory; which image holds
// a name when two collide is layers' TestHoldShortNameTaken), identified by
// the image the kernel says it holds. Two layers get mounts of their own; a
// crash, then a restart, keeps each at its place, and a mount point in use
// is never mounted over.
func TestLayerMountIdentity(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	a, err := sn.chainOf("1")
	if err != nil {
		t.Fatal(err)
	}
	commitFiles(t, sn, "other", "", map[string]string{"b": "B"})
	b, err := sn.chainOf("2")
	if err != nil {
		t.Fatal(err)
	}
	ma, mb := mustLayerMount(t, sn, a), mustLayerMount(t, sn, b)
	if ma == mb {
		t.Fatalf("layers %s and %s share mount point %s", a, b, ma)
	}
	shared := filepath.Join(st.Root(), "mounts", "shared")
	for _, mp := range []string{ma, mb} {
		if filepath.Dir(mp) != shared || len(filepath.Base(mp)) != 16 {
			t.Errorf("layer mount %s: want a 16-hex name in %s", mp, shared)
		}
	}
	holds := func(mp, image string) {
		t.Helper()
		img, isMount, err := layers.MountedImage(mp)
		if err != nil || !isMount || img != image {
			t.Errorf("%s holds %q (mount %v, %v), want %s", mp, img, isMount, err, image)
		}
	}
	holds(ma, st.LayerImage(a))
	holds(mb, st.LayerImage(b))
	assertView(t, sn, "base", map[string]string{"a": "A", "b": ""})
	assertView(t, sn, "other", map[string]string{"b": "B", "a": ""})

	// A crash, then a restart: each layer keeps its mount, found by identity.
	crash(sn)
	sn2, err := New(ctx, st, WithScratchPool(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn2.Close() })
	if got := mustLayerMount(t, sn2, a); got != ma {
		t.Errorf("after restart layer a is at %s, want %s", got, ma)
	}
	if got := mustLayerMount(t, sn2, b); got != mb {
		t.Errorf("after restart layer b is at %s, want %s", got, mb)
	}
	holds(ma, st.LayerImage(a))
	holds(mb, st.LayerImage(b))
	assertView(t, sn2, "other", map[string]string{"b": "B", "a": ""})

	// A mount point with something else mounted there is never mounted
	// over.
	if err := layers.MountImage(st.LayerImage(a), mb, true); !errors.Is(err, layers.ErrMountpointInUse) {
		t.Errorf("mount over a layer mount: %v, want %v", err, layers.ErrMountpointInUse)
	}
	holds(mb, st.LayerImage(b))
}

func mustLayerMount(t *testing.T, sn *Snapshotter, chain digest.Digest) string {
	t.Helper()
	mp, err := sn.layerMount(chain)
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

// crash leaves sn as a SIGKILLed daemon does: its pool stops filling and
// forgets its scratches, its metadata is closed, every mount and hold stays.
func crash(sn *Snapshotter) {
	if sn.pool != nil {
		sn.pool.mu.Lock()
		sn.pool.closed, sn.pool.ready = true, nil
		sn.pool.mu.Unlock()
		sn.pool.done.Wait()
	}
	sn.ms.Close()
	sn.mu.Lock()
	sn.holding = false // the next start takes the holds over
	sn.mu.Unlock()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestUnverifiedLayerOfOlderVersion: a store upgraded from a version that
// adopted commits unverified may hold a client's content under a real
// chain ID, used by that client's snapshots (and mounted). At start, those
// snapshots keep it as a private layer; another namespace's unpack of the
// real layer then gets the real content, not the old mount.
func TestUnverifiedLayerOfOlderVersion(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	content := t.TempDir()
	desc, diffID := blobIn(t, content, map[string]string{"etc/hello": "real"})
	chain := diffID
	// What the old version did with evil's commit under chain.
	commitFiles(t, sn, "scratch-evil", "", map[string]string{"evil-marker": "x"})
	e, err := sn.chainOf("1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(st.LayerDir(chain), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, st.LayerImage(e), st.LayerImage(chain))
	old := fmt.Sprintf(`{"chainID":%q,"diffID":"","format":%d,"size":1,"entries":1,"created":"2026-01-01T00:00:00Z"}`, chain, layerconv.FormatVersion)
	if err := os.WriteFile(filepath.Join(st.LayerDir(chain), "layer.json"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.adopt(ctx, "evil/2/"+chain.String(), "", chain, nil); err != nil {
		t.Fatal(err)
	}
	// A restart of the daemon (the layer stays mounted, as after an upgrade).
	crash(sn)
	sn2, err := New(ctx, st, WithScratchPool(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn2.Close() })
	if st.HasLayer(chain) {
		t.Errorf("the old unverified layer counts as verified")
	}
	assertView(t, sn2, "evil/2/"+chain.String(), map[string]string{"evil-marker": "x"})

	ref := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain.String()})
	key := "good/3/extract-1 " + chain.String()
	ms, err := sn2.Prepare(ctx, key, "", ref)
	if err != nil {
		t.Fatalf("Prepare naming the layer: %v", err)
	}
	if _, err := NewDiffer(sn2, content).Apply(ctx, desc, ms); err != nil {
		t.Fatal(err)
	}
	if err := sn2.Commit(ctx, "good/4/"+chain.String(), key); err != nil {
		t.Fatal(err)
	}
	assertView(t, sn2, "good/4/"+chain.String(), map[string]string{"etc/hello": "real", "evil-marker": ""})
	assertView(t, sn2, "evil/2/"+chain.String(), map[string]string{"evil-marker": "x", "etc/hello": ""})
}
