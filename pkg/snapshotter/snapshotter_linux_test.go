package snapshotter

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/logctx/logctxtest"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/store"
)

func newTest(t *testing.T) (*Snapshotter, *store.Store) {
	t.Helper()
	testutil.NeedRoot(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := New(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sn.Close()
		assertNoMounts(t, st.Root())
	})
	return sn, st
}

func assertNoMounts(t *testing.T, root string) {
	t.Helper()
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, root+"/") {
			t.Errorf("leaked mount %s", m.Mountpoint)
		}
	}
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.Backing, root+"/") {
			t.Errorf("leaked loop device %s -> %s", d.Path, d.Backing)
		}
	}
}

// withMounted mounts ms at a temp dir for fn.
func withMounted(t *testing.T, ms []mount.Mount, fn func(dir string)) {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Error(err)
		}
	}()
	fn(dir)
}

// commitFiles makes a committed snapshot name on parent holding files.
func commitFiles(t *testing.T, sn *Snapshotter, name, parent string, files map[string]string) {
	t.Helper()
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, name+"-active", parent)
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, ms, func(dir string) {
		for p, c := range files {
			if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err := sn.Commit(ctx, name, name+"-active"); err != nil {
		t.Fatal(err)
	}
}

// layerMountsUnder lists the read-only layer mounts under the store root:
// the host's shared mounts and what an older version left in snapshots/l.
func layerMountsUnder(root string) []string {
	ms, _ := mountinfo.Read()
	var out []string
	for _, m := range ms {
		for _, dir := range []string{filepath.Join(root, "mounts", "shared"), filepath.Join(root, snapshotsDir, legacyMounts)} {
			if strings.HasPrefix(m.Mountpoint, dir+"/") {
				out = append(out, m.Mountpoint)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestReconcileAfterCrash: a daemon that died leaves mounts, half-made
// snapshot directories and stray layer mounts; the next start keeps what
// the metadata uses, mounted once, and removes the rest.
func TestReconcileAfterCrash(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	if _, err := sn.Prepare(ctx, "work", "base"); err != nil {
		t.Fatal(err)
	}
	chain, err := sn.chainOf("1")
	if err != nil {
		t.Fatal(err)
	}
	// Leftovers of a crash: a snapshot being created, a directory whose
	// metadata never committed, a layer mount nothing refers to.
	for _, d := range []string{"new-123", "77"} {
		if err := os.MkdirAll(filepath.Join(sn.root, d, "fs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// (where the host mounts layers, and where an older version did).
	for _, stray := range []string{filepath.Join(st.Root(), "mounts", "shared", "ffffffffffffffff"), filepath.Join(sn.root, legacyMounts, "ffffffffffffffff")} {
		if err := layers.MountImage(st.LayerImage(chain), stray, true); err != nil {
			t.Fatal(err)
		}
	}
	// Scratches the pool had ready, mounted.
	pooled := waitPool(t, sn)
	// The crash: metadata closed, mounts left as they are.
	crash(sn)

	sn2, err := New(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn2.Close() })
	if got := layerMountsUnder(st.Root()); len(got) != 1 || got[0] != mustLayerMount(t, sn2, chain) {
		t.Errorf("layer mounts after restart %v, want only %s", got, mustLayerMount(t, sn2, chain))
	}
	if n := testutil.LoopDevices(t, st.LayerImage(chain), 1); n != 1 {
		t.Errorf("layer attached to %d loop devices after restart, want 1", n)
	}
	for _, d := range append([]string{filepath.Join(sn2.root, "new-123"), filepath.Join(sn2.root, "77")}, pooled...) {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("leftover %s not removed (%v)", d, err)
		}
	}
	ms, err := sn2.Mounts(ctx, "work")
	if err != nil {
		t.Fatal(err)
	}
	// The container's writable layer is on its own scratch disk, still
	// mounted after the restart.
	upper := ""
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	var fsst unix.Statfs_t
	if err := unix.Statfs(upper, &fsst); err != nil || fsst.Type != unix.EXT4_SUPER_MAGIC || !strings.HasPrefix(upper, filepath.Join(sn2.root, "2", scratchMount)+"/") {
		t.Errorf("upper %s is not on the snapshot's ext4 scratch (fs type %#x, %v)", upper, fsst.Type, err)
	}
	// A VM runtime finds the layer image behind the mount.
	if imgs, err := LayerImages(ms[0]); err != nil || len(imgs) != 1 || imgs[0] != st.LayerImage(chain) {
		t.Errorf("LayerImages = %v, %v; want [%s]", imgs, err, st.LayerImage(chain))
	}
	withMounted(t, ms, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(b) != "A" {
			t.Errorf("a = %q, %v after restart", b, err)
		}
	})
	// Removing the last user unmounts the layer; gc then drops it.
	if err := sn2.Remove(ctx, "work"); err != nil {
		t.Fatal(err)
	}
	if err := sn2.Remove(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if got := layerMountsUnder(st.Root()); len(got) != 0 {
		t.Errorf("layer mounts after removing every snapshot: %v", got)
	}
	rep, err := st.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedLayers) != 1 || rep.RemovedLayers[0] != chain {
		t.Errorf("gc removed %v, want [%s]", rep.RemovedLayers, chain)
	}
}

// TestGCKeepsSnapshotLayers: layers of committed snapshots are not garbage.
func TestGCKeepsSnapshotLayers(t *testing.T) {
	sn, st := newTest(t)
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	chain, err := sn.chainOf("1")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := st.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedLayers) != 0 || !st.HasLayer(chain) {
		t.Errorf("gc removed %v; layer %s present: %v", rep.RemovedLayers, chain, st.HasLayer(chain))
	}
}

// TestPrepareStoredLayer: Prepare naming a stored layer (snapshot.ref)
// answers "already exists" with a committed snapshot containerd finds by
// that label; an unknown layer gets a normal active snapshot.
func TestPrepareStoredLayer(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	chain, err := sn.chainOf("1")
	if err != nil {
		t.Fatal(err)
	}
	ref := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain.String()})
	if _, err := sn.Prepare(ctx, "ns/9/extract-1 "+chain.String(), "", ref); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a stored layer: %v, want already exists", err)
	}
	var found []snapshots.Info
	filter := `labels."containerd.io/snapshot.ref"==` + chain.String() + `,parent==""`
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error { found = append(found, i); return nil }, filter); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Kind != snapshots.KindCommitted || found[0].Name != "ns/9/extract-1 "+chain.String() {
		t.Fatalf("walk by ref found %+v", found)
	}
	v, err := sn.View(ctx, "v", found[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, v, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(b) != "A" {
			t.Errorf("a = %q, %v in the adopted layer", b, err)
		}
	})
	// A parallel unpack (parent given only at Commit) gets a normal active
	// snapshot: adopting the layer would lose its parent.
	rebase := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain.String(),
		"containerd.io/snapshot/parent-chain-id": digest.FromString("p").String()})
	if _, err := sn.Prepare(ctx, "ns/9/extract-2 "+chain.String(), "", rebase); err != nil {
		t.Fatalf("Prepare in a parallel unpack: %v, want an active snapshot", err)
	}
	other := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: digest.FromString("x").String()})
	if _, err := sn.Prepare(ctx, "fresh", "", other); err != nil {
		t.Fatalf("Prepare of an unknown layer: %v", err)
	}
}

func gzipTar(t *testing.T, files map[string]string) (blob []byte, diffID digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for name, c := range files {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))})
		tw.Write([]byte(c))
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	return gz.Bytes(), digest.FromBytes(raw.Bytes())
}

// TestDifferApply: the differ converts a blob straight into the unpack
// snapshot's layer and returns its diff ID; Commit records that layer.
// Mounts that are not ours, keys that name no layer, blobs it cannot read
// and a wrong diff ID are handled as containerd expects.
func TestDifferApply(t *testing.T) {
	sn, st := newTest(t)
	rec := logctxtest.Default(t)
	ctx := namespaces.WithNamespace(context.Background(), "ns")
	content := t.TempDir()
	blob, diffID := gzipTar(t, map[string]string{"hello": "world"})
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	blobPath := filepath.Join(content, "blobs", "sha256", desc.Digest.Encoded())
	os.MkdirAll(filepath.Dir(blobPath), 0o755)
	if err := os.WriteFile(blobPath, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	d := NewDiffer(sn, content)

	// Not ours: a foreign directory, a snapshot whose key names no layer.
	if _, err := d.Apply(ctx, desc, []mount.Mount{{Type: "bind", Source: t.TempDir(), Options: []string{"rbind"}}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("foreign mounts: %v, want not implemented", err)
	}
	plain, err := sn.Prepare(ctx, "plain", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc, plain); !errdefs.IsNotImplemented(err) {
		t.Errorf("no chain ID in the key: %v, want not implemented", err)
	}

	key := "ns/1/extract-42 " + diffID.String() // base layer: chain ID = diff ID
	wrong := snapshots.WithLabels(map[string]string{"containerd.io/snapshot/diff-id": digest.FromString("other").String()})
	ms, err := sn.Prepare(ctx, "ns/0/extract-41 "+diffID.String(), "", wrong)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc, ms); err == nil || errdefs.IsNotImplemented(err) {
		t.Errorf("wrong diff ID: %v, want a failure", err)
	}
	if st.HasLayer(diffID) {
		t.Errorf("a layer with the wrong diff ID was stored")
	}

	ms, err = sn.Prepare(ctx, key, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Apply(ctx, desc, ms)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != diffID {
		t.Errorf("Apply returned %s, want diff ID %s", got.Digest, diffID)
	}
	// Its log carries the call's namespace, layer and snapshot key.
	if recs := rec.Find("differ: layer converted"); len(recs) != 1 {
		t.Errorf("%d \"layer converted\" records, want 1", len(recs))
	} else {
		for k, v := range map[string]string{"namespace": "ns", "layer": desc.Digest.String(), "key": key} {
			if got, _ := recs[0].Value(k); got != v {
				t.Errorf("layer converted: %s = %q, want %q (%v)", k, got, v, recs[0].Attrs)
			}
		}
	}
	if err := sn.Commit(ctx, "ns/2/"+diffID.String(), key); err != nil {
		t.Fatal(err)
	}
	v, err := sn.View(ctx, "view", "ns/2/"+diffID.String())
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, v, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "hello")); err != nil || string(b) != "world" {
			t.Errorf("hello = %q, %v", b, err)
		}
	})
	// A blob not in the content dir: the walking differ must do it.
	os.Remove(blobPath)
	ms, err = sn.Prepare(ctx, "ns/3/extract-43 "+digest.FromString("y").String(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(ctx, desc, ms); !errdefs.IsNotImplemented(err) {
		t.Errorf("missing blob: %v, want not implemented", err)
	}
}

// TestDifferApplyCorruptGzip: a blob whose gzip stream is broken (the
// differ reads blobs without checking their digest, so the decompressor,
// running ahead in its own goroutine, or the tar reader is the first to
// see it) fails Apply with an error naming the layer, and leaves no layer,
// no reference and no temporary file behind.
func TestDifferApplyCorruptGzip(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	files := map[string]string{}
	for i := 0; i < 200; i++ {
		files[fmt.Sprintf("f%03d", i)] = strings.Repeat(fmt.Sprintf("line %d of a compressible file\n", i), 400)
	}
	good, diffID := gzipTar(t, files)
	content := t.TempDir()
	d := NewDiffer(sn, content)
	for i, tc := range []struct {
		name    string
		corrupt func([]byte) []byte
		want    string // in the error, besides the layer
	}{
		{"checksum", func(b []byte) []byte { b[len(b)-8] ^= 1; return b }, "gzip: invalid checksum"},
		{"truncated", func(b []byte) []byte { return b[:len(b)*2/3] }, "unexpected EOF"},
		{"garbled", func(b []byte) []byte {
			for i := len(b) / 2; i < len(b)/2+64; i++ {
				b[i] ^= 0x5a
			}
			return b
		}, "read layer tar"},
	} {
		blob := tc.corrupt(slices.Clone(good))
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		blobPath := filepath.Join(content, "blobs", "sha256", desc.Digest.Encoded())
		os.MkdirAll(filepath.Dir(blobPath), 0o755)
		if err := os.WriteFile(blobPath, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("ns/%d/extract-%d %s", i, i, diffID)
		ms, err := sn.Prepare(ctx, key, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Apply(ctx, desc, ms)
		if err == nil || errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), desc.Digest.String()) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: Apply: %v, want a failure naming %s and %q", tc.name, err, desc.Digest, tc.want)
		}
		if st.HasLayer(diffID) {
			t.Errorf("%s: a layer was stored from a corrupt blob", tc.name)
		}
		if _, err := os.Stat(filepath.Join(sn.dir(sn.snapshotOfMounts(ms)), refFile)); !os.IsNotExist(err) {
			t.Errorf("%s: the failed snapshot still refers to a layer: %v", tc.name, err)
		}
		for _, dir := range []string{"tmp", "layers"} {
			ents, _ := os.ReadDir(filepath.Join(st.Root(), dir))
			for _, e := range ents {
				if e.Name() != ".locks" {
					t.Errorf("%s: %s/%s left behind", tc.name, dir, e.Name())
				}
			}
		}
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCommitRedirectedDir: a directory of a lower layer renamed in the
// active snapshot (redirect_dir) becomes a whole, opaque directory of the
// new layer, and the old name is gone.
func TestCommitRedirectedDir(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, ms, func(dir string) {
		os.MkdirAll(filepath.Join(dir, "d1/sub"), 0o755)
		os.WriteFile(filepath.Join(dir, "d1/sub/f"), []byte("lower"), 0o644)
	})
	if err := sn.Commit(ctx, "base", "a"); err != nil {
		t.Fatal(err)
	}
	ms, err = sn.Prepare(ctx, "b", "base")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, ms, func(dir string) {
		if err := os.Rename(filepath.Join(dir, "d1"), filepath.Join(dir, "d2")); err != nil {
			t.Fatalf("rename a lower directory: %v", err)
		}
		os.WriteFile(filepath.Join(dir, "d2/new"), []byte("upper"), 0o644)
	})
	if err := sn.Commit(ctx, "top", "b"); err != nil {
		t.Fatal(err)
	}
	// The new layer alone holds d2 whole, opaque, and a whiteout for d1.
	chain, err := sn.chainOf("2")
	if err != nil {
		t.Fatal(err)
	}
	layer, err := sn.lowerDir(chain)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d2/sub/f", "d2/new"} {
		if _, err := os.Stat(filepath.Join(layer, p)); err != nil {
			t.Errorf("layer lacks %s: %v", p, err)
		}
	}
	if v, err := getXattr(filepath.Join(layer, "d2"), "trusted.overlay.opaque"); err != nil || v != "y" {
		t.Errorf("d2 opaque = %q, %v", v, err)
	}
	var stt unix.Stat_t
	if err := unix.Lstat(filepath.Join(layer, "d1"), &stt); err != nil || stt.Mode&unix.S_IFMT != unix.S_IFCHR || stt.Rdev != 0 {
		t.Errorf("d1 is not a whiteout in the layer: %v", err)
	}
	v, err := sn.View(ctx, "v", "top")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, v, func(dir string) {
		for p, want := range map[string]string{"d2/sub/f": "lower", "d2/new": "upper"} {
			if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != want {
				t.Errorf("%s = %q, %v; want %q", p, b, err, want)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "d1")); !os.IsNotExist(err) {
			t.Errorf("d1 still visible after the rename: %v", err)
		}
	})
}

// waitPool waits for the scratch pool to be full and returns its
// directories.
func waitPool(t *testing.T, sn *Snapshotter) []string {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		sn.pool.mu.Lock()
		ready := slices.Clone(sn.pool.ready)
		sn.pool.mu.Unlock()
		if len(ready) == sn.pool.size {
			return ready
		}
		if time.Now().After(deadline) {
			t.Fatalf("scratch pool holds %d of %d after a minute", len(ready), sn.pool.size)
		}
	}
}

// A container's Prepare takes a scratch the pool cloned and mounted ahead:
// the pool directory becomes the snapshot's, its mount with it; the pool
// refills; Remove and Close leave no mount, loop device or pool directory.
func TestScratchPool(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	pooled := waitPool(t, sn)
	mounted, err := mountinfo.Mountpoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range pooled {
		if !mounted[filepath.Join(d, scratchMount)] {
			t.Fatalf("pooled scratch %s not mounted", d)
		}
	}
	ms, err := sn.Prepare(ctx, "c1", "base")
	if err != nil {
		t.Fatal(err)
	}
	gone := 0
	for _, d := range pooled {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			gone++
		}
	}
	if gone != 1 {
		t.Fatalf("%d pooled scratches used by one Prepare, want 1", gone)
	}
	var upper string
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	var fsst unix.Statfs_t
	if err := unix.Statfs(upper, &fsst); err != nil || fsst.Type != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("upper %s is not on an ext4 scratch (%#x, %v)", upper, fsst.Type, err)
	}
	withMounted(t, ms, func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, "b"), []byte("B"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if b, err := os.ReadFile(filepath.Join(upper, "b")); err != nil || string(b) != "B" {
		t.Fatalf("write through the overlay: %q %v", b, err)
	}
	waitPool(t, sn)
	if err := sn.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(sn.root, "pool-*")); len(left) != 0 {
		t.Fatalf("pool directories left after Close: %v", left)
	}
}

// The refill after a Prepare waits while the pool still holds a scratch
// (so that it does not slow that Prepare's caller down), and starts at
// once when a Prepare takes the last one.
func TestScratchPoolRefillWaitsUnlessEmpty(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	waitPool(t, sn)
	sn.pool.mu.Lock()
	sn.pool.delay = time.Hour
	sn.pool.mu.Unlock()
	if _, err := sn.Prepare(ctx, "c1", "base"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a refill that did not wait would be under way
	sn.pool.mu.Lock()
	ready, filling := len(sn.pool.ready), sn.pool.filling
	sn.pool.mu.Unlock()
	if ready != 1 || !filling {
		t.Fatalf("after one Prepare: %d ready, filling %v; want 1 ready and a refill waiting", ready, filling)
	}
	if dirs, _ := filepath.Glob(filepath.Join(sn.root, "pool-*")); len(dirs) != 1 {
		t.Fatalf("pool directories %v, want the one ready", dirs)
	}
	if _, err := sn.Prepare(ctx, "c2", "base"); err != nil {
		t.Fatal(err)
	}
	waitPool(t, sn) // within a minute, not an hour
	for _, k := range []string{"c1", "c2"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
}

// Remove takes the snapshot's directory out of the way at once and tears
// its scratch down in the background; afterwards nothing of it is left:
// no trash directory, no scratch mount, no layer reference.
func TestRemoveTearsDownInBackground(t *testing.T) {
	sn, _ := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	if _, err := sn.Prepare(ctx, "c1", "base"); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := sn.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, _, _, err = storage.GetInfo(ctx, "c1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !sn.hasScratch(id) {
		t.Fatalf("snapshot %s has no scratch", id)
	}
	scratchMnt := filepath.Join(sn.dir(id), scratchMount)
	if err := sn.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.dir(id)); !os.IsNotExist(err) {
		t.Fatalf("snapshot directory still in place after Remove (%v)", err)
	}
	if _, err := sn.Stat(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat after Remove: %v, want not found", err)
	}
	sn.teardowns.Wait()
	if left, _ := filepath.Glob(filepath.Join(sn.root, "trash-*")); len(left) != 0 {
		t.Fatalf("trash left after the teardown: %v", left)
	}
	mounted, err := mountinfo.Mountpoints()
	if err != nil {
		t.Fatal(err)
	}
	for mp := range mounted {
		if mp == scratchMnt || strings.Contains(mp, "/trash-") {
			t.Fatalf("scratch still mounted at %s", mp)
		}
	}
}
