package cristack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/uvm"
)

// benchStack starts a stack with both handlers on layervisor's
// snapshotter (runc's anchor on the same snapshotter: only the runtime
// differs).
func benchStack(b *testing.B) *Stack {
	bin := layervisorBins(b)
	return StartTest(b, Options{LayervisorBin: filepath.Join(bin, "layervisor"), ShimDir: bin, Root: vmStoreRoot(b)})
}

// benchImage makes the image the CRI benchmarks run available and returns
// its reference: busybox from the stack's registry, or real content: the
// docker or OCI archive $LAYERVISOR_BENCH_IMAGE_TAR (a debootstrap-built
// Debian, say), imported into CRI's namespace on layervisor's snapshotter
// (both handlers use it here), named $LAYERVISOR_BENCH_IMAGE.
func benchImage(b *testing.B, s *Stack) string {
	ctx := context.Background()
	tar, ref := os.Getenv("LAYERVISOR_BENCH_IMAGE_TAR"), os.Getenv("LAYERVISOR_BENCH_IMAGE")
	if tar == "" {
		if _, err := s.Crictl(ctx, "pull", busyboxImage); err != nil {
			b.Fatal(err)
		}
		return busyboxImage
	}
	if ref == "" {
		b.Fatal("LAYERVISOR_BENCH_IMAGE_TAR needs LAYERVISOR_BENCH_IMAGE, the reference it holds")
	}
	start := time.Now()
	if out, err := s.Containerd.CtrIn(ctx, "k8s.io", "images", "import", "--snapshotter", "layervisor", tar); err != nil {
		b.Fatalf("import %s: %v %s", tar, err, out)
	}
	b.Logf("imported %s (%s) in %s", ref, tar, time.Since(start).Round(time.Millisecond))
	return ref
}

// podConfigs writes a pod and a container config running command in image.
func podConfigs(b testing.TB, s *Stack, name, image, command string) (pod, ctr string) {
	pod = writeJSON(b, s, name+"-pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "bench", "uid": name + "-uid", "attempt": 1},
		"log_directory": filepath.Join(s.Dir, "tmp", "logs", name),
		"linux":         map[string]any{},
	})
	ctr = writeJSON(b, s, name+"-ctr.json", map[string]any{
		"metadata": map[string]any{"name": "c"},
		"image":    map[string]any{"image": image},
		"command":  []string{"sh", "-c", command},
		"log_path": "c.log",
		"linux":    map[string]any{},
	})
	return pod, ctr
}

// warmTemplate runs one pod first: the first UVM of its shape boots cold
// and saves the template the measured pods start from.
func warmTemplate(b *testing.B, s *Stack) {
	warm, _ := podConfigs(b, s, "warm", busyboxImage, "true")
	ctx := context.Background()
	id, err := s.Crictl(ctx, "runp", "--runtime", HandlerLayervisor, warm)
	if err != nil {
		b.Fatal(err)
	}
	s.Crictl(ctx, "stopp", strings.TrimSpace(id))
	s.Crictl(ctx, "rmp", strings.TrimSpace(id))
}

// BenchmarkCRILaunch is Kata's launch-time method through CRI: the host's
// clock before `crictl runp`, then create and start a container that
// prints its own clock; the figure is the difference (launch-ms), and the
// whole pod lifecycle (run, start, stop, remove) is the op. runc and
// layervisor side by side on one stack; the ratio is layervisor's over
// runc's launch time.
func BenchmarkCRILaunch(b *testing.B) {
	s := benchStack(b)
	ctx := context.Background()
	image := benchImage(b, s)
	warmTemplate(b, s)
	launch := map[string]float64{}
	for _, handler := range []string{HandlerRunc, HandlerLayervisor} {
		b.Run(handler, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				name := fmt.Sprintf("bench-%s-%d-%d", handler, i, time.Now().UnixNano()%1e9)
				// (busybox's date has no %N: a file's time has nanoseconds.)
				podCfg, ctrCfg := podConfigs(b, s, name, image, "touch /tmp/t && stat -c %y /tmp/t; exec sleep 3600")
				start := time.Now()
				id, err := s.Crictl(ctx, "runp", "--runtime", handler, podCfg)
				if err != nil {
					b.Fatal(err)
				}
				id = strings.TrimSpace(id)
				ctr, err := s.Crictl(ctx, "create", id, ctrCfg, podCfg)
				if err != nil {
					b.Fatal(err)
				}
				ctr = strings.TrimSpace(ctr)
				if _, err := s.Crictl(ctx, "start", ctr); err != nil {
					b.Fatal(err)
				}
				var at time.Time
				for deadline := time.Now().Add(time.Minute); at.IsZero(); time.Sleep(10 * time.Millisecond) {
					out, _ := s.Crictl(ctx, "logs", ctr)
					at, _ = time.Parse("2006-01-02 15:04:05.999999999 -0700", strings.TrimSpace(out))
					if time.Now().After(deadline) {
						b.Fatalf("%s: the container printed no time: %q", handler, out)
					}
				}
				total += at.Sub(start)
				if _, err := s.Crictl(ctx, "stopp", id); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Crictl(ctx, "rmp", id); err != nil {
					b.Fatal(err)
				}
			}
			ms := float64(total.Milliseconds()) / float64(b.N)
			launch[handler] = ms
			b.ReportMetric(ms, "launch-ms")
		})
	}
	if launch[HandlerRunc] > 0 && launch[HandlerLayervisor] > 0 {
		b.Logf("launch: layervisor %.0f ms, runc %.0f ms: %.2f×", launch[HandlerLayervisor], launch[HandlerRunc], launch[HandlerLayervisor]/launch[HandlerRunc])
	}
}

// BenchmarkCRIIdlePodMemory runs 10 idle pods with the layervisor handler
// (each a sleeping container of benchImage) and reports, as Kata measures density, the
// PSS of every process behind them (QEMU, virtiofsd, shims) per pod.
func BenchmarkCRIIdlePodMemory(b *testing.B) {
	const pods = 10
	s := benchStack(b)
	ctx := context.Background()
	image := benchImage(b, s)
	// Otherwise the first pod may be the VM that booted and saved the
	// template: it keeps every page its boot touched.
	warmTemplate(b, s)
	for i := 0; i < b.N; i++ {
		var ids []string
		for p := 0; p < pods; p++ {
			podCfg, ctrCfg := podConfigs(b, s, fmt.Sprintf("idle-%d-%d-%d", i, p, time.Now().UnixNano()%1e9), image, "exec sleep 3600")
			id, err := s.Crictl(ctx, "runp", "--runtime", HandlerLayervisor, podCfg)
			if err != nil {
				b.Fatal(err)
			}
			id = strings.TrimSpace(id)
			ids = append(ids, id)
			ctr, err := s.Crictl(ctx, "create", id, ctrCfg, podCfg)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Crictl(ctx, "start", strings.TrimSpace(ctr)); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(20 * time.Second) // idle: free page reporting settles
		var qemu, virtiofsd, shims float64
		var split qemuSplit
		for _, p := range uvm.Processes(s.o.Root) {
			pss := pssMiB(p.PID)
			if p.Kind == "virtiofsd" {
				virtiofsd += pss
			} else {
				qemu += pss
				split.add(p.PID)
			}
		}
		for _, pid := range pidsNamed(layervisorShim) {
			shims += pssMiB(pid)
		}
		b.ReportMetric((qemu+virtiofsd+shims)/pods, "MiB/pod")
		b.ReportMetric(qemu/pods, "qemu-MiB/pod")
		b.ReportMetric(virtiofsd/pods, "virtiofsd-MiB/pod")
		b.ReportMetric(shims/pods, "shim-MiB/pod")
		// What QEMU's figure is made of: the guest pages the guest
		// touched, TCG's translation buffer (none under KVM), QEMU's own.
		b.ReportMetric(split.guestRAM/pods, "qemu-guest-ram-MiB/pod")
		b.ReportMetric(split.tcg/pods, "qemu-tcg-cache-MiB/pod")
		b.ReportMetric((qemu-split.guestRAM-split.tcg)/pods, "qemu-own-MiB/pod")
		for _, id := range ids {
			s.Crictl(ctx, "stopp", id)
			s.Crictl(ctx, "rmp", id)
		}
	}
}

// pssMiB is a process's proportional set size in MiB (0 when gone).
func pssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// qemuSplit sums, over QEMU processes, the PSS of the guest RAM mapping
// (the UVM's ram file) and of TCG's translation buffer (the one anonymous
// mapping that is writable and executable).
type qemuSplit struct{ guestRAM, tcg float64 }

func (q *qemuSplit) add(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return
	}
	var sum *float64
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4:
			sum = nil // a mapping's header: address perms offset dev inode [path]
			if len(f) >= 6 && filepath.Base(f[5]) == "ram" {
				sum = &q.guestRAM
			} else if len(f) == 5 && f[1] == "rwxp" {
				sum = &q.tcg
			}
		case len(f) >= 2 && f[0] == "Pss:" && sum != nil:
			kb, _ := strconv.ParseFloat(f[1], 64)
			*sum += kb / 1024
		}
	}
}

// pidsNamed lists the processes whose command name is name.
func pidsNamed(name string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == name[:min(len(name), 15)] {
			out = append(out, pid)
		}
	}
	return out
}

// BenchmarkCritest runs critest's own benchmark suite (-benchmark: the
// pod and the container lifecycle, 10 samples each, serial and then two
// at a time; no image benchmarks, the registry is ours) on both handlers
// of one stack, and reports each operation's median in ms and
// layervisor's over runc's ("-x").
func BenchmarkCritest(b *testing.B) {
	s := benchStack(b)
	warmTemplate(b, s)
	for i := 0; i < b.N; i++ {
		for _, parallel := range []int{1, 2} {
			runc := critestBenchmark(b, s, HandlerRunc, parallel)
			lv := critestBenchmark(b, s, HandlerLayervisor, parallel)
			for name, ms := range lv {
				op := fmt.Sprintf("%s-p%d", name, parallel)
				b.ReportMetric(ms, op+"-ms")
				if r := runc[name]; r > 0 {
					b.ReportMetric(r, op+"-runc-ms")
					b.ReportMetric(ms/r, op+"-x")
				}
			}
		}
	}
}

// critestBenchmark runs critest -benchmark with handler, parallel samples
// at a time, and returns the median of each operation in ms, keyed
// "suite/Operation".
func critestBenchmark(b *testing.B, s *Stack, handler string, parallel int) map[string]float64 {
	dir := b.TempDir()
	params := filepath.Join(dir, "params.yaml")
	// Flat keys: critest ignores nested ones and falls back to 1 sample.
	yaml := fmt.Sprintf("podsNumber: 10\npodsNumberParallel: %d\npodBenchmarkTimeoutSeconds: 300\n"+
		"containersNumber: 10\ncontainersNumberParallel: %d\ncontainerBenchmarkTimeoutSeconds: 300\nimagesNumber: 0\n", parallel, parallel)
	if err := os.WriteFile(params, []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	r, err := s.Critest(ctx, "-benchmark", "-runtime-handler="+handler,
		"-benchmarking-params-file="+params, "-benchmarking-output-dir="+dir)
	if err != nil {
		b.Fatal(err)
	}
	if r.Failed > 0 {
		// A spec's own limit (e.g. "create PodSandbox shouldn't take
		// too long": 5 s) fails the spec; the lifecycles still report.
		b.Logf("critest -benchmark %s: %s\n%s", handler, r, r.Failures())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	out := map[string]float64{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		var set struct {
			OperationsNames []string
			Datapoints      []struct{ OperationsDurationsNs []int64 }
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			b.Fatalf("%s: %v", f, err)
		}
		suite := strings.TrimSuffix(filepath.Base(f), ".json")
		for i, op := range set.OperationsNames {
			var ms []float64
			for _, d := range set.Datapoints {
				if i < len(d.OperationsDurationsNs) {
					ms = append(ms, float64(d.OperationsDurationsNs[i])/1e6)
				}
			}
			if len(ms) > 0 {
				slices.Sort(ms)
				out[suite+"/"+op] = ms[len(ms)/2]
			}
		}
	}
	if len(out) == 0 {
		b.Fatalf("critest -benchmark %s wrote no results in %s (%s)", handler, dir, r.Log)
	}
	b.Logf("critest -benchmark %s, %d at a time: %s; medians %v", handler, parallel, r, out)
	return out
}
