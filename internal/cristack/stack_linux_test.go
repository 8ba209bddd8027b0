package cristack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// busyboxImage is critest's default container image, as the stack serves it.
const busyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.29-2"

// TestCrictlRunc drives two pods through crictl with the runc handler:
// run, create and start a container in each, exec, logs, stats, reach one
// pod from the other by IP, stop and remove; after Stop nothing of the
// stack is left.
func TestCrictlRunc(t *testing.T) { testCrictl(t, Options{}, HandlerRunc) }

// TestCrictlRuncLayervisorSnapshotter is TestCrictlRunc with images and
// container root file systems on layervisor's snapshotter (layervisor
// serve as containerd's proxy snapshotter and differ).
func TestCrictlRuncLayervisorSnapshotter(t *testing.T) {
	testutil.NeedRoot(t)
	testCrictl(t, Options{LayervisorBin: filepath.Join(layervisorBins(t), "layervisor"), Root: storeRoot(t)}, HandlerRunc)
}

// TestCrictlLayervisor is the same with the layervisor handler: each pod
// is a utility VM, its network wired from CNI's namespace into the guest.
func TestCrictlLayervisor(t *testing.T) {
	testutil.NeedRoot(t)
	bin := layervisorBins(t)
	testCrictl(t, Options{LayervisorBin: filepath.Join(bin, "layervisor"), ShimDir: bin, Root: vmStoreRoot(t)}, HandlerLayervisor)
}

// layervisorBins holds layervisor, its shim and the guest agent.
func layervisorBins(t testing.TB) string { return testutil.Programs(t) }

// storeRoot is a layervisor store root for one test, removed after the
// stack (cleanups run last-registered first).
func storeRoot(t testing.TB) string {
	t.Helper()
	root, err := os.MkdirTemp("/var/tmp", "lvcri-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	return root
}

var (
	vmOnce sync.Once
	vmDir  string
	vmErr  error
)

// vmStoreRoot is storeRoot with the initramfs (boot/) and UVM templates
// (templates/) shared by the test binary's roots: built and saved once.
func vmStoreRoot(t testing.TB) string {
	t.Helper()
	vmOnce.Do(func() {
		vmDir, vmErr = testutil.SharedDir("lv-cristack-vm-")
		for _, d := range []string{"boot", "templates"} {
			if vmErr == nil {
				vmErr = os.Mkdir(filepath.Join(vmDir, d), 0o755)
			}
		}
	})
	if vmErr != nil {
		t.Fatal(vmErr)
	}
	root := storeRoot(t)
	for _, d := range []string{"boot", "templates"} {
		if err := os.Symlink(filepath.Join(vmDir, d), filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func testCrictl(t *testing.T, o Options, handler string) {
	s := StartTest(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	crictl := func(args ...string) string {
		t.Helper()
		out, err := s.Crictl(ctx, args...)
		if err != nil {
			t.Fatalf("%v\ncontainerd log: %s", err, s.Containerd.Log())
		}
		return strings.TrimSpace(out)
	}
	crictl("pull", busyboxImage)
	// An image of the test's own, by the registry's address.
	demo, err := imagebuild.Demo("")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.Push("lv/demo:1", demo)
	if err != nil {
		t.Fatal(err)
	}
	crictl("pull", ref)
	if got := crictl("images", "--quiet", ref); !strings.HasPrefix(got, "sha256:") {
		t.Errorf("crictl images %s: %q", ref, got)
	}

	type pod struct{ name, id, ctr, ip string }
	pods := []*pod{{name: "lvcri-a"}, {name: "lvcri-b"}}
	for _, p := range pods {
		podCfg := writeJSON(t, s, p.name+"-pod.json", map[string]any{
			"metadata":      map[string]any{"name": p.name, "namespace": "default", "uid": p.name + "-uid", "attempt": 1},
			"hostname":      p.name,
			"log_directory": filepath.Join(s.Dir, "tmp", "logs", p.name),
			"linux":         map[string]any{},
		})
		ctrCfg := writeJSON(t, s, p.name+"-ctr.json", map[string]any{
			"metadata": map[string]any{"name": "web"},
			"image":    map[string]any{"image": busyboxImage},
			// busybox httpd serves /etc: /etc/hostname is the pod's name.
			"command":  []string{"sh", "-c", "echo hello from $(hostname); exec httpd -f -p 8080 -h /etc"},
			"log_path": "web.log",
			"linux":    map[string]any{},
		})
		p.id = crictl("runp", "--runtime", handler, podCfg)
		p.ctr = crictl("create", p.id, ctrCfg, podCfg)
		crictl("start", p.ctr)
		p.ip = crictl("inspectp", "--output", "go-template", "--template", "{{.status.network.ip}}", p.id)
		if !strings.HasPrefix(p.ip, "10.88.0.") {
			t.Fatalf("pod %s: IP %q, want one in %s", p.name, p.ip, PodSubnet)
		}
	}
	a, b := pods[0], pods[1]
	t.Logf("pods %s at %s, %s at %s", a.name, a.ip, b.name, b.ip)

	if got := crictl("exec", a.ctr, "cat", "/etc/hostname"); got != a.name {
		t.Errorf("exec cat /etc/hostname = %q, want %q", got, a.name)
	}
	if out, err := s.Crictl(ctx, "exec", a.ctr, "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("exec exit 3: %q, %v", out, err)
	}
	waitFor(t, "container log", func() (bool, string) {
		out, err := s.Crictl(ctx, "logs", a.ctr)
		return err == nil && strings.Contains(out, "hello from "+a.name), out
	})
	var stats struct {
		Stats []struct {
			CPU    map[string]any `json:"cpu"`
			Memory struct {
				WorkingSetBytes struct {
					Value string `json:"value"`
				} `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"stats"`
	}
	waitFor(t, "container stats", func() (bool, string) {
		out, err := s.Crictl(ctx, "stats", "--output", "json", "--id", a.ctr)
		if err != nil || json.Unmarshal([]byte(out), &stats) != nil || len(stats.Stats) != 1 {
			return false, out
		}
		return stats.Stats[0].Memory.WorkingSetBytes.Value != "" && stats.Stats[0].CPU != nil, out
	})

	// Pod to pod by IP, both ways, and from the stack's namespace.
	// (Debian's busybox 1.35 wget crashes with -T: timeout instead.)
	for _, c := range []struct{ from, to *pod }{{a, b}, {b, a}} {
		waitFor(t, "pod-to-pod HTTP", func() (bool, string) {
			out, err := s.Crictl(ctx, "exec", c.from.ctr, "timeout", "10", "wget", "-q", "-O", "-", "http://"+c.to.ip+":8080/hostname")
			return err == nil && strings.TrimSpace(out) == c.to.name, fmt.Sprintf("%s → %s: %q %v", c.from.name, c.to.name, out, err)
		})
	}
	if out, err := s.Command(ctx, "busybox", "timeout", "10", "busybox", "wget", "-q", "-O", "-", "http://"+a.ip+":8080/hostname").Output(); err != nil || strings.TrimSpace(string(out)) != a.name {
		t.Errorf("stack namespace → %s: %q %v", a.name, out, err)
	}

	for _, p := range pods {
		crictl("stopp", p.id)
		crictl("rmp", p.id)
	}
	if out := crictl("pods", "--quiet"); out != "" {
		t.Errorf("pods left: %q", out)
	}
	if o.Root != "" {
		assertPodsGone(t, o.Root)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if leaks := s.Leaks(); len(leaks) > 0 {
		t.Fatalf("left after stop: %v", leaks)
	}
	if _, err := os.Stat(filepath.Join("/var/run/netns", s.NetNS)); !os.IsNotExist(err) {
		t.Errorf("network namespace %s: %v", s.NetNS, err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("stack directory %s: %v", s.Dir, err)
	}
}

// TestStartFailureLeavesNothing makes Start fail after it has made the
// network namespace and started the registry (layervisor serve is
// /bin/false): the error names the cause and nothing is left.
func TestStartFailureLeavesNothing(t *testing.T) {
	testutil.NeedRoot(t)
	if miss := Missing(Options{}); len(miss) > 0 {
		testutil.Unavailable(t, "CRI stack: missing "+strings.Join(miss, ", ")+" (bash scripts/deps.sh)")
	}
	dir, err := os.MkdirTemp("/var/tmp", "lvcri-t-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	s, err := Start(context.Background(), Options{Dir: dir, LayervisorBin: "/bin/false", Root: dir, Logf: logf})
	if err == nil || s != nil || !strings.Contains(err.Error(), "layervisor serve exited") {
		t.Fatalf("Start with a failing layervisor serve: %v, %v", s, err)
	}
	// The namespace's name is in the progress log.
	ns := ""
	for _, l := range logs {
		if f := strings.Fields(l); len(f) > 2 && f[1] == "netns" {
			ns = strings.TrimSuffix(f[2], ",")
		}
	}
	if !strings.HasPrefix(ns, "lvcri-") {
		t.Fatalf("no network namespace in the log: %q", logs)
	}
	left := (&Stack{Dir: dir, NetNS: ns}).Leaks()
	if len(left) > 0 {
		t.Errorf("left after a failed start: %v", left)
	}
	if _, err := Start(context.Background(), Options{Env: []string{"A B=1"}}); err == nil || !strings.Contains(err.Error(), "bad environment entry") {
		t.Errorf("bad Env: %v", err)
	}
}

// TestStopAfterContainerdDied stops a stack whose containerd is gone
// with a pod running: Stop says what it had to clean up by force (the
// shim, the containers, their mounts) and leaves nothing, not even the
// killed shim's socket.
func TestStopAfterContainerdDied(t *testing.T) {
	s := StartTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	podCfg := writeJSON(t, s, "pod.json", map[string]any{
		"metadata": map[string]any{"name": "lv", "namespace": "default", "uid": "lv-uid", "attempt": 1},
		"linux":    map[string]any{},
	})
	ctrCfg := writeJSON(t, s, "ctr.json", map[string]any{
		"metadata": map[string]any{"name": "sleep"}, "image": map[string]any{"image": busyboxImage},
		"command": []string{"sleep", "1000"}, "linux": map[string]any{},
	})
	for _, args := range [][]string{{"pull", busyboxImage}, {"runp", podCfg}} {
		if out, err := s.Crictl(ctx, args...); err != nil {
			t.Fatal(err)
		} else if args[0] == "runp" {
			ctr, err := s.Crictl(ctx, "create", strings.TrimSpace(out), ctrCfg, podCfg)
			if err == nil {
				_, err = s.Crictl(ctx, "start", strings.TrimSpace(ctr))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// The processes naming containerd's socket: containerd and the shim.
	var shims, socks []string
	for _, p := range procsMentioning(s.Containerd.Socket) {
		if ss := shimSockets(p); ss != nil {
			shims, socks = append(shims, strconv.Itoa(p)), append(socks, ss...)
		}
	}
	if len(shims) != 1 || len(socks) != 2 {
		t.Fatalf("shims %v, sockets %v; want one shim, two sockets", shims, socks)
	}
	if _, err := os.Stat(socks[0]); err != nil {
		t.Fatalf("shim socket: %v", err)
	}
	if err := s.Containerd.Stop(); err != nil {
		t.Fatal(err)
	}
	err := s.Stop()
	for _, want := range []string{"shims left running", "containers left in runc", "mounts left under"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("stop: %v; want it to say %q", err, want)
		}
	}
	if leaks := s.Leaks(); len(leaks) > 0 {
		t.Errorf("left: %v", leaks)
	}
	if _, err := os.Stat(socks[0]); !os.IsNotExist(err) {
		t.Errorf("killed shim's socket %s: %v", socks[0], err)
	}
}

func writeJSON(t testing.TB, s *Stack, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(s.Dir, "tmp", name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after a minute; last: %s", what, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestCritestRunc is the reference: critest v1.37.0's conformance suite
// with the runc handler (on containerd's overlayfs snapshotter). It logs
// the counts and the failed specs, and holds a floor: the run completes
// and most specs pass.
func TestCritestRunc(t *testing.T) {
	s := StartTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	r, err := s.Critest(ctx, "-runtime-handler="+HandlerRunc, "-ginkgo.skip="+excludedSpecs(map[string]string{DigestImageSpec: ""}))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("critest runc: %s", r)
	keepCritest(t, r)
	if f := r.Failures(); f != "" {
		t.Logf("failed specs:\n%s", f)
	}
	for name, why := range r.SkippedSpecs {
		t.Logf("skipped: %s: %s", name, why)
	}
	if r.Failed > 0 || r.Passed < 100 {
		t.Errorf("critest runc: %s; want no failure and at least 100 passed (the reference)", r)
	}
}

// TestCritestLayervisor runs the CRI validation suite against the
// layervisor handler: every pod a utility VM.
func TestCritestLayervisor(t *testing.T) {
	testutil.NeedRoot(t)
	bin := layervisorBins(t)
	s := StartTest(t, Options{LayervisorBin: filepath.Join(bin, "layervisor"), ShimDir: bin, Root: vmStoreRoot(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	r, err := s.Critest(ctx, "-runtime-handler="+HandlerLayervisor, "-ginkgo.skip="+excludedSpecs(LayervisorExclusions))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("critest layervisor: %s", r)
	keepCritest(t, r)
	for name, why := range r.SkippedSpecs {
		t.Logf("skipped: %s: %s", name, why)
	}
	if f := r.Failures(); f != "" {
		t.Errorf("critest layervisor: %s; failed outside the exclusion list:\n%s", r, f)
	}
	if r.Passed < 100 {
		t.Errorf("critest layervisor: %s; want at least 100 passed", r)
	}
}

// excludedSpecs is a ginkgo skip pattern matching the specs named.
func excludedSpecs(specs map[string]string) string {
	var alts []string
	for name := range specs {
		alts = append(alts, regexp.QuoteMeta(name))
	}
	slices.Sort(alts)
	return strings.Join(alts, "|")
}

// keepCritest copies a run's log and JUnit report into
// $LAYERVISOR_CRITEST_OUT when it is set (the stack's directory goes at
// cleanup).
func keepCritest(t *testing.T, r *Result) {
	out := os.Getenv("LAYERVISOR_CRITEST_OUT")
	if out == "" {
		return
	}
	for _, f := range []string{r.Log, r.Report} {
		b, err := os.ReadFile(f)
		if err == nil {
			err = os.WriteFile(filepath.Join(out, t.Name()+"-"+filepath.Base(f)), b, 0o644)
		}
		if err != nil {
			t.Logf("keep %s: %v", f, err)
		}
	}
}

// assertPodsGone checks that nothing of the store's pods outlives rmp,
// before the stack stops: no QEMU or virtiofsd, no loop device on a file
// of the store, no mount under it, no shim, no tap (in the pods' network
// namespaces, gone with them: checked by the stack's Leaks).
func assertPodsGone(t *testing.T, root string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left = left[:0]
		for _, p := range uvm.Processes(root) {
			left = append(left, fmt.Sprintf("%s %d (%s)", p.Kind, p.PID, p.UVM))
		}
		for _, pid := range pidsNamed(layervisorShim) {
			left = append(left, fmt.Sprintf("shim %d", pid))
		}
		backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
		for _, f := range backing {
			if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), root+"/uvms/") {
				left = append(left, "loop device on "+strings.TrimSpace(string(b)))
			}
		}
		if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
			for _, l := range strings.Split(string(mounts), "\n") {
				if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], root+"/uvms/") {
					left = append(left, "mount "+f[4])
				}
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("left after rmp: %s", strings.Join(left, "; "))
	}
}
