package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
)

// BenchmarkRun: a container's whole life from the command line, paired
// run by run: `layervisor run IMAGE -- true` (process isolation: runc)
// against `ctr run --rm IMAGE id true` (Debian's containerd 1.6, runc shim,
// overlayfs), on the demo image. LAYERVISOR_BENCH_RUNS pairs (default 20);
// it reports both medians and their ratio (ctr ÷ layervisor). With
// LAYERVISOR_BENCH_VM=1 it adds `layervisor run --isolation vm` (templated).
func BenchmarkRun(b *testing.B) {
	setup(b)
	ctx := context.Background()
	dir := b.TempDir()
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(dir, "demo.tar")
	if err := im.Write(imagebuild.OCITar, img); err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	lv(b, root, "image", "import", img)
	d, err := containerdtest.Start(ctx, filepath.Join(dir, "containerd"))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	if err := d.Import(ctx, img); err != nil {
		b.Fatal(err)
	}
	timed := func(name string, args ...string) time.Duration {
		cmd := exec.Command(name, args...)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v %s", name, args, err, out)
		}
		return time.Since(start)
	}
	runLV := func(extra ...string) time.Duration {
		return timed(binPath, append(append([]string{"--root", root, "run"}, extra...), "demo:latest", "--", "true")...)
	}
	runs := envInt("LAYERVISOR_BENCH_RUNS", 20)
	vm := os.Getenv("LAYERVISOR_BENCH_VM") == "1"
	if vm {
		runLV("--isolation", "vm") // makes the template
	}
	runLV()
	for i := 0; i < b.N; i++ {
		var lvs, ctrs, vms []time.Duration
		for j := 0; j < runs; j++ {
			lvs = append(lvs, runLV())
			ctrs = append(ctrs, timed("ctr", "-a", d.Socket, "-n", "bench", "run", "--rm", "demo:latest", "bench-run", "true"))
			if vm {
				vms = append(vms, runLV("--isolation", "vm"))
			}
		}
		ml, mc := medianOf(lvs), medianOf(ctrs)
		b.ReportMetric(float64(ml.Microseconds())/1000, "lv-ms")
		b.ReportMetric(float64(mc.Microseconds())/1000, "ctr-ms")
		b.ReportMetric(float64(mc)/float64(ml), "ratio")
		if vm {
			b.ReportMetric(float64(medianOf(vms).Microseconds())/1000, "lv-vm-ms")
		}
	}
}

func medianOf(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
