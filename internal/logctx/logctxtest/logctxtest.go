// Package logctxtest records what code logs through slog's default logger,
// for tests that check a record carries its request's attributes (package
// logctx).
package logctxtest

import (
	"context"
	"log"
	"log/slog"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/logctx"
)

// SetDefault makes l slog's default logger until the test ends, then puts
// back the default and the log package's output (which slog.SetDefault
// redirects). Tests using it must not run in parallel.
func SetDefault(t testing.TB, l *slog.Logger) {
	t.Helper()
	old, w, flags := slog.Default(), log.Writer(), log.Flags()
	slog.SetDefault(l)
	t.Cleanup(func() {
		slog.SetDefault(old)
		log.SetOutput(w)
		log.SetFlags(flags)
	})
}

// Default records every record logged through slog's default logger, at
// any level, through a logctx.Handler, until the test ends.
func Default(t testing.TB) *Recorder {
	t.Helper()
	r := &Recorder{}
	SetDefault(t, slog.New(logctx.NewHandler(&handler{r: r})))
	return r
}

// Record is one record logged: its message and its attributes in order
// (the logger's, then the context's, then the call's).
type Record struct {
	Level   slog.Level
	Message string
	Attrs   []slog.Attr
}

// Value is the value of the first attribute named key, and whether there
// is one.
func (r Record) Value(key string) (string, bool) {
	for _, a := range r.Attrs {
		if a.Key == key {
			return a.Value.String(), true
		}
	}
	return "", false
}

// Count is how many attributes are named key.
func (r Record) Count(key string) int {
	n := 0
	for _, a := range r.Attrs {
		if a.Key == key {
			n++
		}
	}
	return n
}

// Recorder keeps records. Safe for concurrent use.
type Recorder struct {
	mu   sync.Mutex
	recs []Record
}

// Find returns the records with message msg, in the order logged.
func (r *Recorder) Find(msg string) []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Record
	for _, rec := range r.recs {
		if rec.Message == msg {
			out = append(out, rec)
		}
	}
	return out
}

type handler struct {
	r     *Recorder
	attrs []slog.Attr // the logger's (With); groups are not kept apart
}

func (h *handler) Enabled(context.Context, slog.Level) bool { return true }

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	rec := Record{Level: r.Level, Message: r.Message, Attrs: append([]slog.Attr(nil), h.attrs...)}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs = append(rec.Attrs, a)
		return true
	})
	h.r.mu.Lock()
	h.r.recs = append(h.r.recs, rec)
	h.r.mu.Unlock()
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &handler{r: h.r, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

func (h *handler) WithGroup(string) slog.Handler { return h }
