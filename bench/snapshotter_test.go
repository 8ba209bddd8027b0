package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/containerdtest"
)

// containerdFlavours are the containerd builds the snapshotter benchmark
// runs on: Debian's 1.6 (no proxy differ: walking differ, conversion at
// Commit) and 2.x from scripts/deps.sh (the layervisor differ converts at
// unpack time).
func containerdFlavours() map[string]containerdtest.Options {
	fl := map[string]containerdtest.Options{"containerd1.6": {Config: containerdtest.ProxyConfig16}}
	dir := containerdtest.Containerd2Dir()
	if _, err := os.Stat(filepath.Join(dir, "containerd")); err == nil {
		fl["containerd2"] = containerdtest.Options{Bin: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), Config: containerdtest.ProxyConfig2}
	}
	return fl
}

// snapshotterEnv is a fresh layervisor serve and containerd pair.
type snapshotterEnv struct {
	d     *containerdtest.Daemon
	serve *exec.Cmd
	dir   string
}

func startSnapshotterEnv(b *testing.B, o containerdtest.Options, serveArgs ...string) *snapshotterEnv {
	b.Helper()
	dir, err := os.MkdirTemp("", "lvb-")
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	ctrd := filepath.Join(dir, "c")
	o.Config = fmt.Sprintf(o.Config, sock)
	serve := exec.Command(binPath, "--root", filepath.Join(dir, "lv"), "--quiet", "serve", "--socket", sock,
		"--containerd-content", filepath.Join(ctrd, "root", "io.containerd.content.v1.content"))
	serve.Args = append(serve.Args, serveArgs...)
	if err := serve.Start(); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			serve.Process.Kill()
			b.Fatal("layervisor serve did not come up")
		}
	}
	d, err := containerdtest.StartWith(context.Background(), ctrd, o)
	if err != nil {
		serve.Process.Kill()
		b.Fatal(err)
	}
	return &snapshotterEnv{d: d, serve: serve, dir: dir}
}

// stop stops containerd, then the snapshotter (which unmounts its layers).
func (e *snapshotterEnv) stop() {
	e.d.Stop()
	e.serve.Process.Signal(os.Interrupt)
	e.serve.Wait()
	os.RemoveAll(e.dir)
}

// BenchmarkContainerdSnapshotter compares, on the same containerd, the
// layervisor snapshotter with containerd's overlayfs snapshotter:
//
//   - unpack: `ctr images import` of the bench archive into a fresh
//     containerd (content ingestion + unpack), page cache dropped first;
//   - unpack-only: the same import once the archive's blobs are in the
//     content store (an untimed `import --no-unpack` first): the unpack,
//     without the ingestion both snapshotters share;
//   - rootfs-ready: prepare an active snapshot on the image's top layer
//     through containerd's Snapshots API and mount it with containerd's
//     mount code, as a runtime does (layervisor with a scratch disk per
//     container, and with --no-scratch), one at a time and in a burst
//     (rootfsReadyVariants). Not through ctr: its process start (~20 ms)
//     would drown both.
//
// It reports seconds per operation for each and the speed-up
// overlayfs/layervisor (above 1: layervisor is faster).
func BenchmarkContainerdSnapshotter(b *testing.B) {
	setup(b)
	ctx := context.Background()
	for name, o := range containerdFlavours() {
		for variant, ingestFirst := range map[string]bool{"unpack": false, "unpack-only": true} {
			b.Run(name+"/"+variant, func(b *testing.B) {
				took := map[string]time.Duration{} // by snapshotter
				for i := 0; i < b.N; i++ {
					for _, sn := range []string{"layervisor", "overlayfs"} {
						b.StopTimer()
						env := startSnapshotterEnv(b, o)
						if ingestFirst {
							if _, err := env.d.Ctr(ctx, "images", "import", "--no-unpack", archive); err != nil {
								b.Fatal(err)
							}
						}
						dropCaches()
						b.StartTimer()
						t0 := time.Now()
						if err := env.d.ImportWith(ctx, archive, sn); err != nil {
							b.Fatal(err)
						}
						took[sn] += time.Since(t0)
						b.StopTimer()
						env.stop()
						b.StartTimer()
					}
				}
				report(b, took["layervisor"], took["overlayfs"])
			})
		}
		for _, v := range rootfsReadyVariants {
			b.Run(name+"/"+v.name, func(b *testing.B) {
				b.StopTimer()
				env := startSnapshotterEnv(b, o, v.serveArgs...)
				defer env.stop()
				for _, sn := range []string{"layervisor", "overlayfs"} {
					if err := env.d.ImportWith(ctx, archive, sn); err != nil {
						b.Fatal(err)
					}
				}
				c, err := env.d.Dial(ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				took := map[string][]time.Duration{} // by snapshotter
				for i := 0; i < b.N; i++ {
					for _, name := range []string{"layervisor", "overlayfs"} {
						target := filepath.Join(b.TempDir(), "rootfs")
						os.MkdirAll(target, 0o755)
						key := fmt.Sprintf("%s-%d", name, i)
						time.Sleep(v.pause)
						b.StartTimer()
						t0 := time.Now()
						if err := c.PrepareMount(ctx, name, key, chainTop, target); err != nil {
							b.Fatal(err)
						}
						took[name] = append(took[name], time.Since(t0))
						b.StopTimer()
						if err := c.Release(ctx, name, key, target); err != nil {
							b.Fatal(err)
						}
					}
				}
				report(b, sum(took["layervisor"]), sum(took["overlayfs"]))
				b.ReportMetric(median(took["layervisor"]).Seconds(), "layervisor-median-s")
				b.ReportMetric(median(took["overlayfs"]).Seconds(), "overlayfs-median-s")
			})
		}
	}
}

// BenchmarkContainerd16ExtractFloor measures how fast containerd 1.6 itself
// extracts the bench image with overlayfs when its root is on tmpfs (RAM)
// rather than on disk. Containerd 1.6 has no proxy differ: any snapshotter
// it unpacks into gets every layer extracted by its walking differ first, so
// disk time ÷ tmpfs time ("ceiling") bounds the speed-up of any such
// snapshotter over overlayfs, with a conversion that cost nothing.
func BenchmarkContainerd16ExtractFloor(b *testing.B) {
	setup(b)
	ctx := context.Background()
	took := map[string]time.Duration{}
	for i := 0; i < b.N; i++ {
		for _, medium := range []string{"disk", "tmpfs"} {
			b.StopTimer()
			dir := b.TempDir()
			if medium == "tmpfs" {
				if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8g"); err != nil {
					b.Fatal(err)
				}
			}
			d, err := containerdtest.Start(ctx, filepath.Join(dir, "c"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := d.Ctr(ctx, "images", "import", "--no-unpack", archive); err != nil {
				b.Fatal(err)
			}
			dropCaches()
			b.StartTimer()
			t0 := time.Now()
			err = d.ImportWith(ctx, archive, "overlayfs")
			took[medium] += time.Since(t0)
			b.StopTimer()
			d.Stop()
			if medium == "tmpfs" {
				unix.Unmount(dir, unix.MNT_DETACH)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.ReportMetric(took["disk"].Seconds()/float64(b.N), "disk-s/op")
	b.ReportMetric(took["tmpfs"].Seconds()/float64(b.N), "tmpfs-s/op")
	b.ReportMetric(took["disk"].Seconds()/took["tmpfs"].Seconds(), "ceiling")
}

// rootfsReadyVariants: containers started one at a time (an untimed pause
// before each, in which either snapshotter's background work settles:
// containerd's gc removing the last one, the scratch pool's refill), or in
// a burst, one right after the other; with scratch disks and without.
var rootfsReadyVariants = []struct {
	name      string
	serveArgs []string
	pause     time.Duration
}{
	{"rootfs-ready", nil, 150 * time.Millisecond},
	{"rootfs-ready-burst", nil, 0},
	{"rootfs-ready-no-scratch", []string{"--no-scratch"}, 150 * time.Millisecond},
	{"rootfs-ready-no-scratch-burst", []string{"--no-scratch"}, 0},
}

func sum(ds []time.Duration) (t time.Duration) {
	for _, d := range ds {
		t += d
	}
	return t
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(b *testing.B, lv, ov time.Duration) {
	n := float64(b.N)
	b.ReportMetric(lv.Seconds()/n, "layervisor-s/op")
	b.ReportMetric(ov.Seconds()/n, "overlayfs-s/op")
	if lv > 0 {
		b.ReportMetric(ov.Seconds()/lv.Seconds(), "speedup")
	}
}
