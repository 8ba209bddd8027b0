package cristack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// podConfigs writes a pod and a container config running command.
func podConfigs(b testing.TB, s *Stack, name, command string) (pod, ctr string) {
	pod = writeJSON(b, s, name+"-pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "bench", "uid": name + "-uid", "attempt": 1},
		"log_directory": filepath.Join(s.Dir, "tmp", "logs", name),
		"linux":         map[string]any{},
	})
	ctr = writeJSON(b, s, name+"-ctr.json", map[string]any{
		"metadata": map[string]any{"name": "c"},
		"image":    map[string]any{"image": busyboxImage},
		"command":  []string{"sh", "-c", command},
		"log_path": "c.log",
		"linux":    map[string]any{},
	})
	return pod, ctr
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
	if _, err := s.Crictl(ctx, "pull", busyboxImage); err != nil {
		b.Fatal(err)
	}
	launch := map[string]float64{}
	for _, handler := range []string{HandlerRunc, HandlerLayervisor} {
		b.Run(handler, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				name := fmt.Sprintf("bench-%s-%d-%d", handler, i, time.Now().UnixNano()%1e9)
				// (busybox's date has no %N: a file's time has nanoseconds.)
				podCfg, ctrCfg := podConfigs(b, s, name, "touch /tmp/t && stat -c %y /tmp/t; exec sleep 3600")
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
// (each a sleeping busybox) and reports, as Kata measures density, the
// PSS of every process behind them (QEMU, virtiofsd, shims) per pod.
func BenchmarkCRIIdlePodMemory(b *testing.B) {
	const pods = 10
	s := benchStack(b)
	ctx := context.Background()
	if _, err := s.Crictl(ctx, "pull", busyboxImage); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		var ids []string
		for p := 0; p < pods; p++ {
			podCfg, ctrCfg := podConfigs(b, s, fmt.Sprintf("idle-%d-%d-%d", i, p, time.Now().UnixNano()%1e9), "exec sleep 3600")
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
		for _, p := range uvm.Processes(s.o.Root) {
			pss := pssMiB(p.PID)
			if p.Kind == "virtiofsd" {
				virtiofsd += pss
			} else {
				qemu += pss
			}
		}
		for _, pid := range pidsNamed(layervisorShim) {
			shims += pssMiB(pid)
		}
		b.ReportMetric((qemu+virtiofsd+shims)/pods, "MiB/pod")
		b.ReportMetric(qemu/pods, "qemu-MiB/pod")
		b.ReportMetric(virtiofsd/pods, "virtiofsd-MiB/pod")
		b.ReportMetric(shims/pods, "shim-MiB/pod")
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
