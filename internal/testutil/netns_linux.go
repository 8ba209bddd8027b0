package testutil

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// PodNetwork addresses: what NetnsPair sets up.
const (
	PodAddr  = "10.99.0.2"
	NodeAddr = "10.99.0.1"
)

// NetnsPair makes two network namespaces joined by a veth pair, as CNI's
// bridge plugin leaves a pod: "pod" holds eth0 (PodAddr/24, default route
// via NodeAddr), "node" holds peer0 (NodeAddr/24). It returns the pod
// namespace's path and the node namespace's name; cleanup deletes both.
func NetnsPair(t testing.TB) (podPath, node string) {
	t.Helper()
	NeedRoot(t)
	NeedTool(t, "ip")
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	pod, node := "lvt-pod-"+suffix, "lvt-node-"+suffix
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", pod)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", pod).Run() })
	ip("netns", "add", node)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", node).Run() })
	ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", node)
	ip("-n", pod, "addr", "add", PodAddr+"/24", "dev", "eth0")
	ip("-n", pod, "link", "set", "eth0", "up")
	ip("-n", pod, "link", "set", "lo", "up")
	ip("-n", pod, "route", "add", "default", "via", NodeAddr)
	ip("-n", node, "addr", "add", NodeAddr+"/24", "dev", "peer0")
	ip("-n", node, "link", "set", "peer0", "up")
	ip("-n", node, "link", "set", "lo", "up")
	return filepath.Join("/var/run/netns", pod), node
}
