package shim_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/shim"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// qemus counts the QEMU processes of the test's root.
func (e *ctrEnv) qemus() int {
	n := 0
	for _, p := range uvm.Processes(e.root) {
		if p.Kind == "qemu" {
			n++
		}
	}
	return n
}

// TestCtrPodContainerd2: containers annotated with one sandbox id share
// one shim and one utility VM, each with its own root file system;
// deleting one leaves the other running; the VM goes with the last.
func TestCtrPodContainerd2(t *testing.T) { testCtrPod(t, containerd2(t)) }

// TestCtrPodContainerd16 is the same with Debian's containerd 1.6.
func TestCtrPodContainerd16(t *testing.T) {
	testutil.NeedTool(t, "containerd")
	testCtrPod(t, containerdtest.Options{Config: containerdtest.ProxyConfig16})
}

func testCtrPod(t *testing.T, opts containerdtest.Options) {
	e := setupCtr(t, opts)
	ctx := context.Background()
	pod := []string{"--annotation", shim.AnnotationSandboxID + "=pod1"}
	a, b := "lv-pod-a", "lv-pod-b"
	start := time.Now()
	if out, err := e.run(ctx, append(append([]string{"-d"}, pod...), "--annotation", shim.AnnotationContainerType+"=sandbox", e.ref, a, "sleep", "1000")...); err != nil {
		e.fail("ctr run -d %s: %v %s", a, err, out)
	}
	first := time.Since(start)
	start = time.Now()
	if out, err := e.run(ctx, append(append([]string{"-d"}, pod...), "--annotation", shim.AnnotationContainerType+"=container", e.ref, b, "sleep", "1000")...); err != nil {
		e.fail("ctr run -d %s: %v %s", b, err, out)
	}
	t.Logf("ctr run -d: first container of the pod %v, second %v", first.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if out, err := e.d.Ctr(ctx, "tasks", "ls"); err != nil || !regexp.MustCompile(a+`\s+\d+\s+RUNNING`).MatchString(out) || !regexp.MustCompile(b+`\s+\d+\s+RUNNING`).MatchString(out) {
		e.fail("tasks ls: want both running, got %q, %v", out, err)
	}
	if pids := shimPIDs(e.root); len(pids) != 1 {
		e.fail("shims of the pod: %v, want one", pids)
	}
	if n := e.qemus(); n != 1 {
		e.fail("QEMU processes of the pod: %d, want one (%v)", n, uvm.Processes(e.root))
	}
	// Each container has a root file system of its own.
	if out, err := e.d.Ctr(ctx, "task", "exec", "--exec-id", "w", a, "sh", "-c", "echo a > /only-in-a"); err != nil {
		e.fail("exec in %s: %v %s", a, err, out)
	}
	out, err := e.d.Ctr(ctx, "task", "exec", "--exec-id", "r", b, "sh", "-c", "cat /etc/demo-release; test -e /only-in-a && echo shared || echo own")
	if err != nil || out != "layervisor demo 2\nown\n" {
		e.fail("exec in %s: want the image's file and a root of its own, got %q, %v", b, out, err)
	}

	// Deleting one leaves the other running in the same VM.
	if out, err := e.d.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", a); err != nil {
		e.fail("kill %s: %v %s", a, err, out)
	}
	waitStopped(e, a)
	for _, args := range [][]string{{"tasks", "rm", a}, {"containers", "rm", a}} {
		if out, err := e.d.Ctr(ctx, args...); err != nil {
			e.fail("%v: %v %s", args, err, out)
		}
	}
	time.Sleep(time.Second) // containerd's shim delete after the connection closed
	if out, err := e.d.Ctr(ctx, "task", "exec", "--exec-id", "after", b, "cat", "/etc/demo-release"); err != nil || out != "layervisor demo 2\n" {
		e.fail("exec in %s after %s was deleted: %q, %v", b, a, out, err)
	}
	if pids := shimPIDs(e.root); len(pids) != 1 {
		e.fail("shims after one container was deleted: %v", pids)
	}
	if n := e.qemus(); n != 1 {
		e.fail("QEMU processes after one container was deleted: %d", n)
	}

	// The last one takes the VM and the shim with it.
	if out, err := e.d.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", b); err != nil {
		e.fail("kill %s: %v %s", b, err, out)
	}
	waitStopped(e, b)
	for _, args := range [][]string{{"tasks", "rm", b}, {"containers", "rm", b}} {
		if out, err := e.d.Ctr(ctx, args...); err != nil {
			e.fail("%v: %v %s", args, err, out)
		}
	}
	e.assertNothingRunning("pod deleted")

	// Two containers of a new pod started at once still share one shim
	// and VM; when that shim is SIGKILLed, containerd's clean-up (the
	// shim's delete action, once per container) reaps the pod's VM.
	pod2 := []string{"--annotation", shim.AnnotationSandboxID + "=pod2"}
	ids := []string{"lv-pod2-a", "lv-pod2-b"}
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func() {
			out, err := e.run(ctx, append(append([]string{"-d"}, pod2...), e.ref, id, "sleep", "1000")...)
			if err != nil {
				err = fmt.Errorf("ctr run -d %s: %w %s", id, err, out)
			}
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			e.fail("%v", err)
		}
	}
	if pids := shimPIDs(e.root); len(pids) != 1 {
		e.fail("shims of a pod started at once: %v, want one", pids)
	}
	if n := e.qemus(); n != 1 {
		e.fail("QEMU processes of a pod started at once: %d, want one", n)
	}
	for _, id := range ids {
		if out, err := e.d.Ctr(ctx, "task", "exec", "--exec-id", "x", id, "true"); err != nil {
			e.fail("exec in %s: %v %s", id, err, out)
		}
	}
	pid, _ := strconv.Atoi(shimPIDs(e.root)[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNoShim(t, e.root)
	for _, id := range ids {
		for _, args := range [][]string{{"task", "rm", "-f", id}, {"container", "rm", id}} {
			if out, err := e.d.Ctr(ctx, args...); err != nil && !strings.Contains(out+err.Error(), "not found") {
				e.fail("%v after the shim was killed: %v %s", args, err, out)
			}
		}
	}
	e.assertNothingRunning("pod whose shim was killed")
	logShimComplaints(t, e.d)
}

func waitStopped(e *ctrEnv, id string) {
	e.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err := e.d.Ctr(context.Background(), "tasks", "ls")
		if err == nil && regexp.MustCompile(regexp.QuoteMeta(id)+`\s+\d+\s+STOPPED`).MatchString(out) {
			return
		}
		if time.Now().After(deadline) {
			e.fail("task %s not stopped: %q, %v", id, strings.TrimSpace(out), err)
		}
	}
}

// mountinfoUnder lists the mount points under dir.
func mountinfoUnder(dir string) ([]string, error) {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var under []string
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, dir+"/") {
			under = append(under, m.Mountpoint)
		}
	}
	return under, nil
}
