package shim

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/layervisor/layervisor/internal/logctx/logctxtest"
)

// TestLogsCarryTask: what a task request logs carries the shim's namespace
// and sandbox and the request's container (and exec), added once where the
// request enters, also from the goroutine publishing its events; the
// daemon's logger writes each of them once. No VM: Create of an invalid id
// fails (and logs) before one is made.
func TestLogsCarryTask(t *testing.T) {
	rec := logctxtest.Default(t)
	pub := newPublisher("", "ns1") // no containerd: events are logged and dropped
	s := newService(context.Background(), "ns1", "pod1", t.TempDir(), pub, func() {})

	_, err := s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c1/x", Bundle: t.TempDir()})
	if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("Create of id c1/x: %v, want invalid argument", err)
	}
	want := func(r logctxtest.Record, attrs map[string]string) {
		t.Helper()
		for k, v := range attrs {
			if got, ok := r.Value(k); !ok || got != v {
				t.Errorf("%q: %s = %q (present %v), want %q; record %v", r.Message, k, got, ok, v, r.Attrs)
			}
		}
		if _, ok := r.Value("id"); ok {
			t.Errorf("%q: a hand-added id: %v", r.Message, r.Attrs)
		}
	}
	task := map[string]string{"namespace": "ns1", "sandbox": "pod1", "container": "c1/x"}
	for _, msg := range []string{"create task", "create task failed"} {
		recs := rec.Find(msg)
		if len(recs) != 1 {
			t.Fatalf("%d %q records, want 1", len(recs), msg)
		}
		want(recs[0], task)
		if _, ok := recs[0].Value("exec"); ok {
			t.Errorf("%q: an exec without one: %v", msg, recs[0].Attrs)
		}
	}

	// An event's log, written later by the publishing goroutine, carries
	// the request's attributes too.
	pub.publish(s.logCtx(context.Background(), "c2", "e2"), TopicTaskExit, &eventstypes.TaskExit{ContainerID: "c2", ID: "e2"})
	pub.close()
	recs := rec.Find("no TTRPC_ADDRESS: event not published")
	if len(recs) != 1 {
		t.Fatalf("%d \"event not published\" records, want 1", len(recs))
	}
	want(recs[0], map[string]string{"namespace": "ns1", "sandbox": "pod1", "container": "c2", "exec": "e2", "topic": TopicTaskExit})

	// The daemon's logger (serveAction's): the shim's namespace and sandbox
	// once each, whether from the logger or the request.
	var buf bytes.Buffer
	logctxtest.SetDefault(t, newLogger(&buf, slog.LevelInfo, "ns1", "pod1"))
	s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c3/y", Bundle: t.TempDir()})
	var line string
	for l := range strings.Lines(buf.String()) {
		if strings.Contains(l, `msg="create task failed"`) {
			line = l
		}
	}
	t.Logf("daemon log: %s", line)
	if !strings.Contains(line, "shim="+BinaryName+" namespace=ns1 sandbox=pod1 container=c3/y ") ||
		strings.Count(line, "namespace=") != 1 || strings.Count(line, "sandbox=") != 1 {
		t.Errorf("daemon log line %q: want the shim, namespace, sandbox and container once each", line)
	}
}
