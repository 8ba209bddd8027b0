package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/scratch"

	"github.com/layervisor/layervisor/internal/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
}

// tarOf builds a layer tar: "name" → file content, "name/" → dir,
// "name" → "->target" symlink, ".wh." names are whiteouts.
func tarOf(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		body := files[n]
		h := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(body))}
		switch {
		case strings.HasSuffix(n, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case strings.HasPrefix(body, "->"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, body[2:], 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func makeLayer(t *testing.T, dir string, files map[string]string) string {
	return makeLayerB(t, dir, files)
}

func makeLayerB(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, LayerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := layerconv.Convert(context.Background(), layerconv.OpenBytes(tarOf(t, files)), f); err != nil {
		t.Fatal(err)
	}
	return dir
}

var tplOnce sync.Once
var tplPath string

func makeScratch(t *testing.T, dir string) string { return makeScratchB(t, dir) }

func makeScratchB(t testing.TB, dir string) string {
	t.Helper()
	tplOnce.Do(func() {
		root, err := testutil.SharedDir("lv-scratch-tpl")
		if err != nil {
			t.Fatal(err)
		}
		tplPath, err = scratch.EnsureTemplate(context.Background(), root, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
	})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := scratch.Clone(context.Background(), tplPath, filepath.Join(dir, ScratchFile)); err != nil {
		t.Fatal(err)
	}
	return dir
}

type fixture struct {
	host   *Host
	base   string
	top    string
	root   string
	mounts int // mount table size before
}

func newFixture(t *testing.T) *fixture {
	needRoot(t)
	root := t.TempDir()
	f := &fixture{host: &Host{StateDir: filepath.Join(root, "mounts")}, root: root}
	f.base = makeLayer(t, filepath.Join(root, "base"), map[string]string{
		"etc/":           "",
		"etc/os-release": "base\n",
		"keep":           "kept\n",
		"gone":           "deleted later\n",
		"opq/":           "",
		"opq/old":        "old\n",
		"link":           "->keep",
	})
	f.top = makeLayer(t, filepath.Join(root, "top"), map[string]string{
		"etc/os-release":   "top\n",
		".wh.gone":         "",
		"opq/":             "",
		"opq/.wh..wh..opq": "",
		"opq/new":          "new\n",
	})
	ms, _ := mountinfo.Read()
	f.mounts = len(ms)
	t.Cleanup(func() { f.assertClean(t) })
	return f
}

// assertClean checks that nothing of ours is mounted or attached.
func (f *fixture) assertClean(t *testing.T) {
	t.Helper()
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, f.root) {
			t.Errorf("leaked mount %s", m.Mountpoint)
			unmount(m.Mountpoint)
		}
	}
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.Backing, f.root) {
			t.Errorf("leaked loop device %s -> %s", d.Path, d.Backing)
		}
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestHostMergedView(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	s := makeScratch(t, filepath.Join(f.root, "c1"))
	rootfs, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s})
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]string{
		"etc/os-release": "top\n",
		"keep":           "kept\n",
		"link":           "kept\n",
		"opq/new":        "new\n",
	}
	for p, want := range checks {
		if got := read(t, filepath.Join(rootfs, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, gone := range []string{"gone", "opq/old"} {
		if _, err := os.Lstat(filepath.Join(rootfs, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s should be hidden, got %v", gone, err)
		}
	}
	// Writes land in the scratch, not in the layers.
	if err := os.WriteFile(filepath.Join(rootfs, "keep"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	// Remount: the change persisted in the scratch.
	rootfs, err = f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(rootfs, "keep")); got != "changed\n" {
		t.Errorf("after remount keep = %q", got)
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
}

func TestHostSharedLayersRefCounts(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	s1 := makeScratch(t, filepath.Join(f.root, "c1"))
	s2 := makeScratch(t, filepath.Join(f.root, "c2"))
	r1, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, f.base}, Scratch: s1})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := f.host.Mount(ctx, "c2", Layers{ReadOnly: []string{f.base}, Scratch: s2})
	if err != nil {
		t.Fatal(err)
	}
	refs := func(folder string) []string {
		r, err := f.host.Refs(filepath.Join(folder, LayerFile))
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(r)
		return r
	}
	if got := refs(f.base); !slices.Equal(got, []string{"c1", "c2"}) {
		t.Fatalf("base refs %v", got)
	}
	if got := refs(f.top); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("top refs %v", got)
	}
	// Each layer image is loop-attached exactly once.
	devs, _ := loop.List()
	count := map[string]int{}
	for _, d := range devs {
		count[d.Backing]++
	}
	for _, l := range []string{f.base, f.top} {
		if n := count[filepath.Join(l, LayerFile)]; n != 1 {
			t.Errorf("%s attached %d times", l, n)
		}
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if got := refs(f.top); len(got) != 0 {
		t.Fatalf("top refs after c1 unmount %v", got)
	}
	if got := read(t, filepath.Join(r2, "etc/os-release")); got != "base\n" {
		t.Fatalf("c2 broken after c1 unmount: %q", got)
	}
	if _, err := os.Stat(filepath.Join(r1, "keep")); err == nil {
		t.Fatal("c1 rootfs still populated")
	}
	if err := f.host.Unmount(ctx, "c2", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if got := refs(f.base); len(got) != 0 {
		t.Fatalf("base refs at end %v", got)
	}
}

func TestHostSharedScratch(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sandbox := makeScratch(t, filepath.Join(f.root, "sandbox"))
	member := filepath.Join(f.root, "member")
	os.MkdirAll(member, 0o755)
	if err := os.Symlink(filepath.Join(sandbox, ScratchFile), filepath.Join(member, ScratchFile)); err != nil {
		t.Fatal(err)
	}
	r1, err := f.host.Mount(ctx, "sandbox", Layers{ReadOnly: []string{f.base}, Scratch: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := f.host.Mount(ctx, "member", Layers{ReadOnly: []string{f.base}, Scratch: member})
	if err != nil {
		t.Fatal(err)
	}
	if users, _ := f.host.Refs(filepath.Join(sandbox, ScratchFile)); len(users) != 2 {
		t.Fatalf("shared scratch users %v, want both containers", users)
	}
	// Separate upper dirs: a write in one is invisible in the other.
	os.WriteFile(filepath.Join(r1, "only-in-sandbox"), []byte("x"), 0o644)
	if _, err := os.Stat(filepath.Join(r2, "only-in-sandbox")); err == nil {
		t.Fatal("containers sharing a scratch share an upper dir")
	}
	for _, id := range []string{"member", "sandbox"} {
		if err := f.host.Unmount(ctx, id, UnmountAll); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHostBadInput(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := FromFolders([]string{f.base}); err == nil || err.Error() != "need at least two layers - base and scratch" {
		t.Fatalf("FromFolders with one folder: %v", err)
	}
	if err := f.host.Unmount(ctx, "nope", UnmountAll); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("unmount of unmounted: %v", err)
	}
	if err := f.host.Unmount(ctx, "c1", UnmountSCSI); err == nil || !strings.Contains(err.Error(), `"all"`) {
		t.Fatalf("host unmount op scsi: %v", err)
	}
	if _, err := f.host.Mount(ctx, "../evil", Layers{ReadOnly: []string{f.base}, Scratch: f.base}); err == nil {
		t.Fatal("unsafe id accepted")
	}
	s := makeScratch(t, filepath.Join(f.root, "c1"))
	// A corrupt layer in the middle: everything mounted before it is undone.
	bad := filepath.Join(f.root, "bad")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, LayerFile), make([]byte, 1<<20), 0o644)
	_, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.top, bad, f.base}, Scratch: s})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("mount with corrupt layer: %v", err)
	}
	if refs, _ := f.host.Refs(filepath.Join(f.top, LayerFile)); len(refs) != 0 {
		t.Fatalf("top layer still referenced after failed mount: %v", refs)
	}
	missing := filepath.Join(f.root, "missing")
	if _, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{missing}, Scratch: s}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing layer: %v", err)
	}
	// Mounting twice is refused.
	if _, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.base}, Scratch: s}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.host.Mount(ctx, "c1", Layers{ReadOnly: []string{f.base}, Scratch: s}); err == nil {
		t.Fatal("double mount accepted")
	}
	if err := f.host.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
}

// Parallel mounts and unmounts of containers sharing layers, and holders
// (Hold) taking and dropping the same layers, keep exact counts: nothing is
// mounted twice, nothing stays mounted.
func TestHostConcurrent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const n = 8
	scratches := make([]string, n)
	for i := range scratches {
		scratches[i] = makeScratch(t, filepath.Join(f.root, fmt.Sprintf("c%d", i)))
	}
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 5*n)
		for i := 0; i < n; i++ {
			wg.Add(2)
			go func(i int) {
				defer wg.Done()
				holder := fmt.Sprintf("h%d", i)
				mp, err := f.host.Hold(ctx, holder, layerImage(f.base))
				if err != nil {
					errs <- err
					return
				}
				if _, err := os.Stat(filepath.Join(mp, "content", "keep")); err != nil {
					errs <- err
				}
				if n := attached(t, f.base, 1); n != 1 {
					errs <- fmt.Errorf("base attached %d times while held", n)
				}
				if err := f.host.Release(ctx, holder, layerImage(f.base)); err != nil {
					errs <- err
				}
			}(i)
			go func(i int) {
				defer wg.Done()
				id := fmt.Sprintf("c%d", i)
				ro := []string{f.top, f.base}
				if i%2 == 1 {
					ro = []string{f.base}
				}
				rootfs, err := f.host.Mount(ctx, id, Layers{ReadOnly: ro, Scratch: scratches[i]})
				if err != nil {
					errs <- err
					return
				}
				if _, err := os.Stat(filepath.Join(rootfs, "keep")); err != nil {
					errs <- err
				}
				if err := f.host.Unmount(ctx, id, UnmountAll); err != nil {
					errs <- err
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for _, l := range []string{f.base, f.top} {
			if refs, _ := f.host.Refs(filepath.Join(l, LayerFile)); len(refs) != 0 {
				t.Fatalf("round %d: %s refs %v after all unmounted", round, l, refs)
			}
			if n := attached(t, l, 0); n != 0 {
				t.Fatalf("round %d: %s attached %d times after all unmounted", round, l, n)
			}
		}
	}
}
