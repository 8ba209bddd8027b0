package shim_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/shim"
)

// BenchmarkShimRun is issue #21's measure: `ctr run --rm` of the demo
// image with the layervisor runtime (containerd 2.4, templated UVM)
// against `layervisor run --isolation vm` of the same image on the same
// store (the shim's overhead), and against `ctr run --rm` with runc on
// the same snapshotter. LAYERVISOR_BENCH_RUNS rounds (default 20), the
// three commands in a rotating order each round; medians, and the
// median of each round's difference (this machine's speed drifts).
func BenchmarkShimRun(b *testing.B) {
	e := setupCtr(b, containerd2(b))
	ctx := context.Background()
	lv := filepath.Join(e.bin, "layervisor")
	if out, err := exec.Command(lv, "--root", e.root, "-q", "image", "import", "--name", "demo:latest", demoImage(b)).CombinedOutput(); err != nil {
		b.Fatalf("image import: %v %s", err, out)
	}
	n := 20
	if v, err := strconv.Atoi(os.Getenv("LAYERVISOR_BENCH_RUNS")); err == nil && v > 0 {
		n = v
	}
	runs := []struct {
		name string
		run  func(i int) error
	}{
		{"shim", func(i int) error {
			_, err := e.d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", e.ref, "b-shim-"+strconv.Itoa(i+1), "true")
			return err
		}},
		{"layervisor-run", func(int) error {
			return exec.Command(lv, "--root", e.root, "run", "--isolation", "vm", "demo:latest", "--", "true").Run()
		}},
		{"runc", func(i int) error {
			_, err := e.d.Ctr(ctx, "run", "--rm", "--snapshotter", "layervisor", e.ref, "b-runc-"+strconv.Itoa(i+1), "true")
			return err
		}},
	}
	// The first of each makes what later ones reuse (the UVM template,
	// containerd's and the runtimes' first-use state): not counted.
	for _, r := range runs {
		if err := r.run(-1); err != nil {
			e.fail("warm-up %s: %v", r.name, err)
		}
	}
	times := make([][]time.Duration, len(runs))
	b.ResetTimer()
	for i := 0; i < n; i++ {
		for k := range runs {
			j := (i + k) % len(runs)
			t0 := time.Now()
			if err := runs[j].run(i); err != nil {
				e.fail("%s, round %d: %v", runs[j].name, i, err)
			}
			times[j] = append(times[j], time.Since(t0))
		}
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	shimT, lvT, runcT := times[0], times[1], times[2]
	var over []time.Duration
	var ratio []float64
	for i := range shimT {
		over = append(over, shimT[i]-lvT[i])
		ratio = append(ratio, float64(shimT[i])/float64(runcT[i]))
	}
	slices.Sort(ratio)
	b.ReportMetric(ms(median(shimT)), "shim-ms")
	b.ReportMetric(ms(median(lvT)), "layervisor-run-ms")
	b.ReportMetric(ms(median(runcT)), "runc-ms")
	b.ReportMetric(ms(median(over)), "overhead-ms")
	b.ReportMetric(ratio[len(ratio)/2], "shim/runc")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d rounds; shim %v, layervisor run %v, runc %v (medians); shim overhead (paired) %v",
		n, median(shimT).Round(time.Millisecond), median(lvT).Round(time.Millisecond),
		median(runcT).Round(time.Millisecond), median(over).Round(time.Millisecond))
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
