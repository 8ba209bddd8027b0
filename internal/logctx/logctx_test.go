package logctx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// capture keeps the records it is handed.
type capture struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, r.Clone())
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

func attrs(r slog.Record) []string {
	var out []string
	r.Attrs(func(a slog.Attr) bool {
		out = append(out, a.Key+"="+a.Value.String())
		return true
	})
	return out
}

func keys(as []slog.Attr) string {
	var out []string
	for _, a := range as {
		out = append(out, a.Key+"="+a.Value.String())
	}
	return strings.Join(out, " ")
}

func TestHandlerAddsContextAttrs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewJSONHandler(&buf, nil)))
	ctx := With(context.Background(), slog.String("namespace", "k8s.io"), slog.String("container", "c1"))
	log.InfoContext(ctx, "started", "pid", 42)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%s: %v", buf.String(), err)
	}
	if m["namespace"] != "k8s.io" || m["container"] != "c1" || m["pid"] != float64(42) || m["msg"] != "started" {
		t.Errorf("record %s: want namespace, container and pid", buf.String())
	}
	// The context's attributes come first, then the call's own.
	if i, j := strings.Index(buf.String(), `"container"`), strings.Index(buf.String(), `"pid"`); i < 0 || i > j {
		t.Errorf("record %s: the context's attributes are not before the call's", buf.String())
	}
}

func TestHandlerWithAttrsAndGroupKeepContext(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, nil))).With("shim", "x")
	log.InfoContext(With(context.Background(), slog.String("container", "c1")), "m")
	if s := buf.String(); !strings.Contains(s, "shim=x container=c1") {
		t.Errorf("record %q: want the logger's and the context's attributes", s)
	}
	buf.Reset()
	log.WithGroup("g").InfoContext(With(context.Background(), slog.String("container", "c2")), "m", "k", 1)
	if s := buf.String(); !strings.Contains(s, "g.container=c2 g.k=1") {
		t.Errorf("record %q: want the context's attributes in the group", s)
	}
}

func TestLoggerAttrsNotRepeated(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, nil))).With("namespace", "ns", "sandbox", "s")
	ctx := With(context.Background(), slog.String("namespace", "ns"), slog.String("sandbox", "s"), slog.String("container", "c"))
	log.InfoContext(ctx, "m")
	s := buf.String()
	if strings.Count(s, "namespace=") != 1 || strings.Count(s, "sandbox=") != 1 || !strings.Contains(s, "namespace=ns sandbox=s container=c") {
		t.Errorf("record %q: want namespace and sandbox once, then container", s)
	}
	// Under a group the context's attributes are the group's: no clash.
	buf.Reset()
	log.WithGroup("g").InfoContext(ctx, "m")
	if s := buf.String(); !strings.Contains(s, "g.namespace=ns g.sandbox=s g.container=c") {
		t.Errorf("record %q: want the context's attributes in the group", s)
	}
}

func TestRecordWithoutContextAttrsUnchanged(t *testing.T) {
	c := &capture{}
	log := slog.New(NewHandler(c))
	log.Info("plain", "k", "v")                                   // context.Background()
	log.InfoContext(context.TODO(), "todo", "k", "v")             // no attributes
	log.InfoContext(With(context.Background()), "none", "k", "v") // With of nothing
	if len(c.recs) != 3 {
		t.Fatalf("%d records, want 3", len(c.recs))
	}
	for _, r := range c.recs {
		if got := strings.Join(attrs(r), " "); got != "k=v" {
			t.Errorf("record %q: attributes %q, want just k=v", r.Message, got)
		}
	}
	if got := From(context.Background()); got != nil {
		t.Errorf("From(Background) = %v, want nil", got)
	}
	var nilCtx context.Context
	if got := From(nilCtx); got != nil {
		t.Errorf("From(nil) = %v, want nil", got)
	}
}

func TestNestedWithAccumulatesWithoutAliasing(t *testing.T) {
	bg := context.Background()
	in := []slog.Attr{slog.String("namespace", "ns"), slog.String("sandbox", "s")}
	parent := With(bg, in...)
	in[0] = slog.String("namespace", "changed") // the caller's slice is not kept
	a := With(parent, slog.String("container", "a"))
	b := With(parent, slog.String("container", "b"), slog.String("exec", "e"))
	if got := keys(From(parent)); got != "namespace=ns sandbox=s" {
		t.Errorf("parent: %s", got)
	}
	if got := keys(From(a)); got != "namespace=ns sandbox=s container=a" {
		t.Errorf("a: %s", got)
	}
	if got := keys(From(b)); got != "namespace=ns sandbox=s container=b exec=e" {
		t.Errorf("b: %s", got)
	}
	// Appending to what From returns never writes into a context's slice.
	x := append(From(a), slog.String("extra", "1"))
	y := append(From(a), slog.String("extra", "2"))
	if x[len(x)-1].Value.String() != "1" || y[len(y)-1].Value.String() != "2" {
		t.Errorf("appends to From alias each other: %s / %s", keys(x), keys(y))
	}
	if got := keys(From(a)); got != "namespace=ns sandbox=s container=a" {
		t.Errorf("a after appends: %s", got)
	}
	// A key given again replaces the outer one.
	c := With(a, slog.String("container", "c"))
	if got := keys(From(c)); got != "namespace=ns sandbox=s container=c" {
		t.Errorf("c: %s", got)
	}
	if got := keys(From(a)); got != "namespace=ns sandbox=s container=a" {
		t.Errorf("a after c: %s", got)
	}
}

func TestConcurrent(t *testing.T) {
	c := &capture{}
	log := slog.New(NewHandler(c))
	parent := With(context.Background(), slog.String("namespace", "ns"))
	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := With(parent, slog.Int("container", i))
			for j := range 20 {
				ctx := With(ctx, slog.Int("step", j))
				log.InfoContext(ctx, fmt.Sprint(i), "at", time.Duration(j))
			}
		}()
	}
	wg.Wait()
	if len(c.recs) != n*20 {
		t.Fatalf("%d records, want %d", len(c.recs), n*20)
	}
	for _, r := range c.recs {
		a := attrs(r)
		if len(a) != 4 || a[0] != "namespace=ns" || a[1] != "container="+r.Message || !strings.HasPrefix(a[2], "step=") || !strings.HasPrefix(a[3], "at=") {
			t.Fatalf("record %q: %v", r.Message, a)
		}
	}
	if got := keys(From(parent)); got != "namespace=ns" {
		t.Errorf("parent: %s", got)
	}
}
