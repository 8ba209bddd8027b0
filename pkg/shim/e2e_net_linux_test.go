package shim_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/podnet"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/shim"
)

// netImage is busybox with its network applets.
func netImage(t *testing.T) string {
	t.Helper()
	base, err := imagebuild.BusyboxBase()
	if err != nil {
		t.Fatal(err)
	}
	tools := imagebuild.Layer{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{
		imagebuild.Dir("www", 0o755), imagebuild.File("www/pod.txt", "hello from the pod\n", 0o644),
	}}
	for _, a := range []string{"wget", "httpd", "ip", "nc"} {
		tools.Entries = append(tools.Entries, imagebuild.Symlink("bin/"+a, "busybox"))
	}
	im := imagebuild.Image{Name: "net:latest", Cmd: []string{"/bin/sh"}, Layers: []imagebuild.Layer{base, tools}}
	out := filepath.Join(t.TempDir(), "net.tar")
	if err := im.Write(imagebuild.OCITar, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// A container given a network namespace set up as CNI leaves one (a veth
// with an address and a default route) runs in a utility VM whose network
// card has the namespace's MAC and address: it reaches the node, and the
// node reaches it. Nothing of the wiring outlives the task.
func TestCtrPodNetworkContainerd2(t *testing.T) {
	e := setupCtr(t, containerd2(t))
	ctx := context.Background()
	podNS, node := testutil.NetnsPair(t)
	podName := filepath.Base(podNS)
	if out, err := e.d.Ctr(ctx, "images", "import", "--snapshotter", "layervisor", netImage(t)); err != nil {
		e.fail("import: %v %s", err, out)
	}
	out, _ := exec.Command("ip", "-n", podName, "-o", "link", "show", "eth0").CombinedOutput()
	mac := strings.Fields(strings.SplitN(string(out), "link/ether ", 2)[1])[0]

	// The node serves a file.
	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "node.txt"), []byte("hello from the node\n"), 0o644)
	httpd := exec.Command("ip", "netns", "exec", node, "busybox", "httpd", "-f", "-p", "8080", "-h", www)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { httpd.Process.Kill(); httpd.Wait() }()

	ref := ""
	refs, _ := e.d.Ctr(ctx, "images", "ls", "-q")
	for _, r := range strings.Fields(refs) {
		if strings.HasSuffix(r, "net:latest") {
			ref = r
		}
	}
	run := []string{"run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", "--with-ns", "network:" + podNS, ref, "lv-net"}
	out2, err := e.d.Ctr(ctx, append(run, "sh", "-c", "ip -o addr show; ip -o link; ip route; wget -qO- http://"+testutil.NodeAddr+":8080/node.txt")...)
	if err != nil {
		e.fail("ctr run with the pod network: %v %s", err, out2)
	}
	for _, want := range []string{testutil.PodAddr + "/24", mac, "default via " + testutil.NodeAddr, "hello from the node"} {
		if !strings.Contains(out2, want) {
			e.fail("in the container: want %q in %q", want, out2)
		}
	}
	waitNoShim(t, e.root)
	assertUnwired(t, podName)

	// The node reaches a server in the container.
	if out, err := e.d.Ctr(ctx, "run", "-d", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", "--with-ns", "network:"+podNS, ref, "lv-srv",
		"httpd", "-f", "-p", "8080", "-h", "/www"); err != nil {
		e.fail("ctr run -d: %v %s", err, out)
	}
	var got []byte
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		// (bash's /dev/tcp: Debian's static busybox wget crashes here.)
		get := fmt.Sprintf("exec 3<>/dev/tcp/%s/8080 && printf 'GET /pod.txt HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3", testutil.PodAddr)
		got, err = exec.Command("ip", "netns", "exec", node, "bash", "-c", get).CombinedOutput()
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if !strings.HasSuffix(string(got), "\r\n\r\nhello from the pod\n") {
		e.fail("from the node: %q, %v", got, err)
	}
	// CRI's port forwarding dials localhost in the pod's namespace on the
	// host: the side door takes it to the guest.
	got, err = exec.Command("nsenter", "--net="+podNS, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /pod.txt HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3").CombinedOutput()
	if !strings.HasSuffix(string(got), "\r\n\r\nhello from the pod\n") {
		e.fail("localhost:8080 in the pod's namespace on the host (port forwarding): %q, %v", got, err)
	}
	for _, args := range [][]string{{"tasks", "kill", "-s", "SIGKILL", "lv-srv"}} {
		if out, err := e.d.Ctr(ctx, args...); err != nil {
			e.fail("%v: %v %s", args, err, out)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, _ := e.d.Ctr(ctx, "tasks", "ls"); strings.Contains(out, "STOPPED") || time.Now().After(deadline) {
			break
		}
	}
	for _, args := range [][]string{{"tasks", "rm", "lv-srv"}, {"containers", "rm", "lv-srv"}} {
		if out, err := e.d.Ctr(ctx, args...); err != nil {
			e.fail("%v: %v %s", args, err, out)
		}
	}
	waitNoShim(t, e.root)
	assertUnwired(t, podName)

	// A namespace that is not a CNI pod's (no interface) is refused before
	// the container runs, and leaves nothing.
	empty := "lvt-empty-" + fmt.Sprint(time.Now().UnixNano()%1e9)
	exec.Command("ip", "netns", "add", empty).Run()
	defer exec.Command("ip", "netns", "del", empty).Run()
	out3, err := e.d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", "--with-ns", "network:/var/run/netns/"+empty, ref, "lv-bad", "true")
	if err == nil || !strings.Contains(out3+err.Error(), "want exactly one interface besides loopback") {
		e.fail("a namespace without a CNI interface: %v %q", err, out3)
	}
	e.d.Ctr(ctx, "containers", "rm", "lv-bad")
	waitNoShim(t, e.root)
	if regexp.MustCompile(`utility VM started".* id=lv-bad`).MatchString(e.d.Log()) {
		t.Errorf("a VM was made for a task refused for its network namespace")
	}
}

// assertUnwired checks the pod namespace has no tap and no redirect left.
func assertUnwired(t *testing.T, ns string) {
	t.Helper()
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", podnet.TapName).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("tap left in %s: %s", ns, out)
	}
	if out, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth0").CombinedOutput(); strings.Contains(string(out), "ingress") {
		t.Errorf("ingress redirect left on eth0 in %s: %s", ns, out)
	}
}

// A container the guest's OOM killer ends exits 137, and the shim
// publishes TaskOOM before its exit (CRI's "OOMKilled" reason comes from
// it).
func TestCtrOOMContainerd2(t *testing.T) {
	e := setupCtr(t, containerd2(t))
	ctx := context.Background()
	stop := e.events()
	out, err := e.d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", "--memory-limit", "33554432", e.ref, "lv-oom",
		"sh", "-c", "x=0123456789; while true; do x=$x$x; done")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 137 {
		e.fail("a memory hog under 32 MiB: want exit status 137, got %v %q", err, out)
	}
	events := stop()
	oom := regexp.MustCompile(`/tasks/oom .*lv-oom`).FindStringIndex(events)
	exit := regexp.MustCompile(`/tasks/exit .*lv-oom`).FindStringIndex(events)
	if oom == nil || exit == nil || oom[0] > exit[0] {
		t.Errorf("want /tasks/oom before /tasks/exit for lv-oom in:\n%s", events)
	}
	// A container that exits on its own is not reported as OOM-killed.
	if out, err := e.d.Ctr(ctx, "run", "--rm", "--runtime", shim.RuntimeName, "--snapshotter", "layervisor", e.ref, "lv-fine", "true"); err != nil {
		e.fail("ctr run: %v %q", err, out)
	}
	waitNoShim(t, e.root)
}
