// Package bench compares layervisor with its anchors, side by side in one
// run. These are benchmarks, not tests: run them as root with
//
//	go test -run '^$' -bench . -benchtime 3x ./bench/
//
// Sizes: LAYERVISOR_BENCH_MB (default 300) MiB in LAYERVISOR_BENCH_LAYERS
// (default 10) layers.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/ociimage"
	"github.com/layervisor/layervisor/pkg/store"
)

var (
	setupOnce sync.Once
	binPath   string
	archive   string
	chainTop  string
	setupErr  error
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// setup builds the layervisor binary and a benchmark image (once).
func setup(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("benchmarks need root")
	}
	setupOnce.Do(func() {
		dir, err := testutil.SharedDir("layervisor-bench")
		if err != nil {
			setupErr = err
			return
		}
		binPath = filepath.Join(dir, "layervisor")
		if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/layervisor").CombinedOutput(); err != nil {
			setupErr = fmt.Errorf("build: %v %s", err, out)
			return
		}
		layers, mb := envInt("LAYERVISOR_BENCH_LAYERS", 10), envInt("LAYERVISOR_BENCH_MB", 300)
		// LAYERVISOR_BENCH_ARCHIVE: real content (an OCI or docker-save
		// archive) instead of the synthetic image.
		if archive = os.Getenv("LAYERVISOR_BENCH_ARCHIVE"); archive == "" {
			im, err := imagebuild.Bench("bench:latest", layers, int64(mb), imagebuild.Gzip)
			if err != nil {
				setupErr = err
				return
			}
			archive = filepath.Join(dir, "bench.tar")
			if err := im.Write(imagebuild.OCITar, archive); err != nil {
				setupErr = err
				return
			}
		}
		oi, err := ociimage.Open(archive, ociimage.Options{})
		if err != nil {
			setupErr = err
			return
		}
		chainTop = oi.Layers[len(oi.Layers)-1].ChainID.String()
		oi.Close()
		st, _ := os.Stat(archive)
		fmt.Printf("bench image %s: %d layers, %d MiB archive\n", archive, len(oi.Layers), st.Size()>>20)
	})
	if setupErr != nil {
		b.Fatal(setupErr)
	}
}

func lv(b *testing.B, root string, args ...string) string {
	b.Helper()
	out, err := exec.Command(binPath, append([]string{"--root", root, "--quiet"}, args...)...).CombinedOutput()
	if err != nil {
		b.Fatalf("layervisor %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// dropCaches writes back dirty pages first: drop_caches leaves them, and
// their writeback (the freshly built archive) would land on whichever side
// fsyncs next.
func dropCaches() {
	syscall.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
}

// BenchmarkImport: the same archive imported by layervisor and by
// containerd (ctr image import, unpacked to its overlayfs snapshotter).
func BenchmarkImport(b *testing.B) {
	setup(b)
	ctx := context.Background()
	b.Run("layervisor", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			root := b.TempDir()
			dropCaches()
			b.StartTimer()
			lv(b, root, "image", "import", archive)
			b.StopTimer()
			lv(b, root, "image", "rm", "bench:latest")
			lv(b, root, "gc")
			b.StartTimer()
		}
	})
	b.Run("containerd", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			d, err := containerdtest.Start(ctx, b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			dropCaches()
			b.StartTimer()
			if err := d.Import(ctx, archive); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			d.Stop()
			b.StartTimer()
		}
	})
}

// BenchmarkRootfsReady: from an imported image to a mounted container root
// file system. layervisor: container create (scratch clone) + mount, cold
// (no layer mounted) and warm (another container holds the layers).
// containerd: snapshots prepare --target (overlayfs) of the same image.
func BenchmarkRootfsReady(b *testing.B) {
	setup(b)
	ctx := context.Background()
	root := b.TempDir()
	lv(b, root, "image", "import", archive)
	run := func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("c%d", i)
			lv(b, root, "container", "create", name, "--image", "bench:latest", "--scratch-size", "1G")
			lv(b, root, "container", "mount", name)
			b.StopTimer()
			lv(b, root, "container", "rm", name)
			b.StartTimer()
		}
	}
	// The same through the Go API, without the CLI's process start-ups.
	st, err := store.Open(root)
	if err != nil {
		b.Fatal(err)
	}
	api := func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("a%d", i)
			if _, err := st.CreateContainer(ctx, name, "bench:latest", store.ContainerOptions{ScratchSize: 1 << 30}); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Mount(ctx, name); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := st.RemoveContainer(ctx, name); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("layervisor-cli-cold", run)
	b.Run("layervisor-api-cold", api)
	lv(b, root, "container", "create", "holder", "--image", "bench:latest", "--scratch-size", "1G")
	lv(b, root, "container", "mount", "holder")
	b.Run("layervisor-cli-warm", run)
	b.Run("layervisor-api-warm", api)
	lv(b, root, "container", "rm", "holder")
	lv(b, root, "image", "rm", "bench:latest")
	lv(b, root, "gc")

	d, err := containerdtest.Start(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	if err := d.Import(ctx, archive); err != nil {
		b.Fatal(err)
	}
	b.Run("containerd-ctr", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			target := filepath.Join(b.TempDir(), "rootfs")
			os.MkdirAll(target, 0o755)
			key := fmt.Sprintf("k%d", i)
			if err := d.PrepareMount(ctx, key, chainTop, target); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := d.Release(ctx, key, target); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
