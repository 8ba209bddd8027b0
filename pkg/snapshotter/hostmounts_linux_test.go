package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/store"
)

// A layer that a container of the store (`layervisor container mount`) and
// a containerd snapshot (a snapshot whose parent is that layer) both use is
// loop-mounted once on the host, and stays mounted as long as either uses
// it, whichever goes first; gc in between keeps it.
func TestLayerMountedOnceForContainersAndSnapshots(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "demo")
	if err := im.Write(imagebuild.OCIDir, archive); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Import(ctx, archive, store.ImportOptions{Name: "demo"}); err != nil {
		t.Fatal(err)
	}
	c, err := st.CreateContainer(ctx, "c1", "demo", store.ContainerOptions{ScratchSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := st.Mount(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}

	// containerd (2.x) unpacking the same image: every Prepare naming a
	// stored layer becomes a committed snapshot of it at once.
	parent := ""
	for i, chain := range c.ChainIDs {
		key := fmt.Sprintf("ns/%d/extract-%d %s", i, i, chain)
		ref := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain.String()})
		if _, err := sn.Prepare(ctx, key, parent, ref); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of stored layer %s: %v, want already exists", chain, err)
		}
		parent = key
	}
	ms, err := sn.Prepare(ctx, "container", parent)
	if err != nil {
		t.Fatal(err)
	}
	images := make([]string, len(c.ChainIDs))
	for i, chain := range c.ChainIDs {
		images[i] = st.LayerImage(chain)
	}
	once := func(when string, want int) {
		t.Helper()
		for _, img := range images {
			if n := testutil.LoopDevices(t, img, want); n != want {
				t.Errorf("%s: %s is attached to %d loop devices, want %d", when, img, n, want)
			}
		}
	}
	reads := func(when, root string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(root, "etc/demo-release")); err != nil || string(b) != imagebuild.DemoExpected["etc/demo-release"] {
			t.Errorf("%s: etc/demo-release = %q, %v", when, b, err)
		}
	}
	once("container and snapshot", 1)
	top := images[len(images)-1]
	if refs, err := st.Host().Refs(top); err != nil || !slices.Equal(refs, []string{"c1", "holder/" + holderName}) {
		t.Errorf("users of the top layer: %v, %v; want the container and the snapshotter", refs, err)
	}
	// The snapshot's lower directories are the container's layer mounts.
	lower := ""
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lower = v
		}
	}
	if mp, _, _ := layers.MountedImage(filepath.Dir(strings.Split(lower, ":")[0])); mp != top {
		t.Errorf("snapshot's top lower %s holds %q, want %s", lower, mp, top)
	}
	if _, err := st.GC(ctx); err != nil {
		t.Fatal(err)
	}
	once("after gc", 1)
	reads("container", rootfs)
	withMounted(t, ms, func(dir string) { reads("snapshot", dir) })

	// The container goes first: the snapshot keeps the layers mounted.
	if err := st.Unmount(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	once("snapshot alone", 1)
	withMounted(t, ms, func(dir string) { reads("snapshot alone", dir) })

	// Mounted again, then the snapshots go first.
	if rootfs, err = st.Mount(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	once("container again", 1)
	if err := sn.Remove(ctx, "container"); err != nil {
		t.Fatal(err)
	}
	for i := len(c.ChainIDs) - 1; i >= 0; i-- {
		if err := sn.Remove(ctx, fmt.Sprintf("ns/%d/extract-%d %s", i, i, c.ChainIDs[i])); err != nil {
			t.Fatal(err)
		}
	}
	once("container alone", 1)
	reads("container alone", rootfs)
	if err := st.Unmount(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	once("nobody", 0)
	if err := st.RemoveContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
}

// A root written by a version before layers.Host owned every layer mount:
// the snapshotter mounted layers itself at snapshots/l/<16 hex of the chain
// ID>, the host state had no holds, and a container started then may still
// run on an overlay over those mounts. At start the snapshotter adopts the
// old mounts its snapshots use (no second loop device for them, the old
// container keeps working) and unmounts the one nothing uses; a container
// of the store then shares the adopted mount, and the last release
// unmounts it.
func TestMigrateOldLayerMounts(t *testing.T) {
	sn, st := newTest(t)
	ctx := context.Background()
	commitFiles(t, sn, "base", "", map[string]string{"a": "A"})
	commitFiles(t, sn, "other", "", map[string]string{"b": "B"})
	commitFiles(t, sn, "gone", "", map[string]string{"c": "C"})
	if _, err := sn.Prepare(ctx, "work", "base"); err != nil {
		t.Fatal(err)
	}
	chains := map[string]digest.Digest{}
	for id, name := range map[string]string{"1": "base", "2": "other", "3": "gone"} {
		chain, err := sn.chainOf(id)
		if err != nil {
			t.Fatal(err)
		}
		chains[name] = chain
	}
	if err := sn.Remove(ctx, "gone"); err != nil {
		t.Fatal(err)
	}

	// What the old version left: its daemon killed, no holds in the host
	// state (written in the old format), its own layer mounts.
	crash(sn)
	if _, err := st.Host().SetHeld(ctx, holderName, nil, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Root(), "mounts", "state.json"), []byte(`{"containers":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	old := map[string]string{}
	for name, chain := range chains {
		old[name] = filepath.Join(sn.root, legacyMounts, chain.Encoded()[:16])
		if err := layers.MountImage(st.LayerImage(chain), old[name], true); err != nil {
			t.Fatal(err)
		}
	}
	// A container of the old version, running across the upgrade.
	running := t.TempDir()
	opts := "lowerdir=" + layerconv.LowerDir(old["base"]) + ":" + layerconv.LowerDir(old["other"])
	if err := unix.Mount("overlay", running, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(running, 0)

	sn2, err := New(ctx, st, WithScratchPool(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn2.Close() })
	for _, name := range []string{"base", "other"} {
		if got := mustLayerMount(t, sn2, chains[name]); got != old[name] {
			t.Errorf("layer %s is mounted at %s after the upgrade, want the old mount %s adopted", name, got, old[name])
		}
		if n := testutil.LoopDevices(t, st.LayerImage(chains[name]), 1); n != 1 {
			t.Errorf("layer %s is attached to %d loop devices after the upgrade, want 1", name, n)
		}
	}
	if _, isMount, _ := layers.MountedImage(old["gone"]); isMount {
		t.Errorf("the old mount nothing uses, %s, is still mounted", old["gone"])
	}
	if b, err := os.ReadFile(filepath.Join(running, "a")); err != nil || string(b) != "A" {
		t.Errorf("the old container reads a = %q, %v after the upgrade", b, err)
	}
	ms, err := sn2.Mounts(ctx, "work")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, ms, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(b) != "A" {
			t.Errorf("a = %q, %v in the snapshot after the upgrade", b, err)
		}
	})
	assertView(t, sn2, "other", map[string]string{"b": "B"})

	// A container of the store shares the adopted mount.
	scr := filepath.Join(t.TempDir(), "c1")
	tmpl, err := scratch.EnsureTemplate(ctx, st.Root(), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(scr, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := scratch.Clone(ctx, tmpl, filepath.Join(scr, layers.ScratchFile)); err != nil {
		t.Fatal(err)
	}
	host := st.Host()
	rootfs, err := host.Mount(ctx, "c1", layers.Layers{ReadOnly: []string{st.LayerDir(chains["base"])}, Scratch: scr})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "a")); err != nil || string(b) != "A" {
		t.Errorf("a = %q, %v in the store's container", b, err)
	}
	if n := testutil.LoopDevices(t, st.LayerImage(chains["base"]), 1); n != 1 {
		t.Errorf("base layer attached to %d loop devices with a container of the store too, want 1", n)
	}
	if err := host.Unmount(ctx, "c1", layers.UnmountAll); err != nil {
		t.Fatal(err)
	}
	unix.Unmount(running, 0)

	// The last release unmounts the adopted mounts, where they are.
	for _, key := range []string{"work", "base", "other"} {
		if err := sn2.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"base", "other"} {
		if _, err := os.Stat(old[name]); !os.IsNotExist(err) {
			t.Errorf("old mount point %s left after its last release (%v)", old[name], err)
		}
	}
}
