package snapshotter

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/metadata"

	"github.com/layervisor/layervisor/internal/logctx/logctxtest"
)

// TestLogsCarryRequest: what a call logs carries the caller's containerd
// namespace (set on the context, or sent as the gRPC header, as serve gets
// it) and the snapshot's key, parent and name, without the call sites
// repeating them.
func TestLogsCarryRequest(t *testing.T) {
	sn, _ := newTest(t)
	rec := logctxtest.Default(t)
	ctx := namespaces.WithNamespace(context.Background(), "ns-a")

	if _, err := sn.Prepare(ctx, "ns-a/1/active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "ns-a/1/committed", "ns-a/1/active"); err != nil {
		t.Fatal(err)
	}
	// As serve's gRPC server gets it: the namespace in the incoming metadata.
	grpcCtx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(namespaces.GRPCHeader, "ns-b"))
	if _, err := sn.View(grpcCtx, "ns-b/2/view", "ns-a/1/committed"); err != nil {
		t.Fatal(err)
	}
	// Without a namespace: none is made up.
	if _, err := sn.Prepare(context.Background(), "bare", ""); err != nil {
		t.Fatal(err)
	}

	want := func(r logctxtest.Record, attrs map[string]string) {
		t.Helper()
		for k, v := range attrs {
			if got, ok := r.Value(k); !ok || got != v {
				t.Errorf("%q: %s = %q (present %v), want %q; record %v", r.Message, k, got, ok, v, r.Attrs)
			}
			if n := r.Count(k); n > 1 {
				t.Errorf("%q: %s %d times; record %v", r.Message, k, n, r.Attrs)
			}
		}
	}
	created := rec.Find("created snapshot")
	if len(created) != 3 {
		t.Fatalf("%d \"created snapshot\" records, want 3: %v", len(created), created)
	}
	want(created[0], map[string]string{"namespace": "ns-a", "key": "ns-a/1/active", "kind": "Active"})
	if _, ok := created[0].Value("parent"); ok {
		t.Errorf("created snapshot without a parent: %v", created[0].Attrs)
	}
	want(created[1], map[string]string{"namespace": "ns-b", "key": "ns-b/2/view", "parent": "ns-a/1/committed", "kind": "View"})
	want(created[2], map[string]string{"key": "bare"})
	if ns, ok := created[2].Value("namespace"); ok {
		t.Errorf("a call without a namespace logged namespace %q", ns)
	}
	committed := rec.Find("committed snapshot")
	if len(committed) != 1 {
		t.Fatalf("%d \"committed snapshot\" records, want 1", len(committed))
	}
	want(committed[0], map[string]string{"namespace": "ns-a", "name": "ns-a/1/committed", "key": "ns-a/1/active"})
}
