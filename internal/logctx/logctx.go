// Package logctx carries log attributes in a context: what identifies a
// request (a containerd namespace, a snapshot key, a container id) is added
// to its context once, where the request enters, and every record logged
// with that context (slog.InfoContext and the like) carries it, through
// Handler, without each call repeating it.
package logctx

import (
	"context"
	"log/slog"
)

type key struct{}

// With returns a context carrying ctx's attributes followed by attrs. An
// attribute whose key ctx carries already replaces the earlier one (the
// inner request knows better). ctx's own attributes are never modified.
func With(ctx context.Context, attrs ...slog.Attr) context.Context {
	if len(attrs) == 0 {
		return ctx
	}
	parent := From(ctx)
	all := make([]slog.Attr, 0, len(parent)+len(attrs))
	for _, a := range parent {
		if !hasKey(attrs, a.Key) {
			all = append(all, a)
		}
	}
	all = append(all, attrs...)
	return context.WithValue(ctx, key{}, all)
}

func hasKey(attrs []slog.Attr, k string) bool {
	for _, a := range attrs {
		if a.Key == k {
			return true
		}
	}
	return false
}

// From returns the attributes With added to ctx (nil for none). The slice
// is shared: appending to it copies, and it must not be modified in place.
func From(ctx context.Context) []slog.Attr {
	if ctx == nil {
		return nil
	}
	a, _ := ctx.Value(key{}).([]slog.Attr)
	return a[:len(a):len(a)]
}

// Handler adds the attributes of a record's context to the record, before
// the record's own, and passes it to the handler it wraps. A record logged
// without a context, or with one that carries no attributes, passes
// unchanged. An attribute the logger carries already (slog.Logger.With,
// outside any group) is not repeated from the context: a process's logger
// can name what all of its records share (a shim's namespace) and a
// request's context the same, for code logging without that logger. Under
// a group (WithGroup), the context's attributes are in the group, like the
// record's own.
type Handler struct {
	inner   slog.Handler
	keys    map[string]bool // of the logger's own attributes; never modified
	grouped bool
}

// NewHandler wraps h.
func NewHandler(h slog.Handler) *Handler { return &Handler{inner: h} }

// Enabled reports whether the wrapped handler handles level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle adds ctx's attributes to r and hands it on.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	attrs := From(ctx)
	if len(attrs) == 0 {
		return h.inner.Handle(ctx, r)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	for _, a := range attrs {
		if !h.keys[a.Key] {
			nr.AddAttrs(a)
		}
	}
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(a)
		return true
	})
	return h.inner.Handle(ctx, nr)
}

// WithAttrs wraps the wrapped handler's WithAttrs.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &Handler{inner: h.inner.WithAttrs(attrs), keys: h.keys, grouped: h.grouped}
	if !h.grouped && len(attrs) > 0 {
		n.keys = make(map[string]bool, len(h.keys)+len(attrs))
		for k := range h.keys {
			n.keys[k] = true
		}
		for _, a := range attrs {
			n.keys[a.Key] = true
		}
	}
	return n
}

// WithGroup wraps the wrapped handler's WithGroup.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	// The context's attributes go in the group from now on: no clash
	// with the logger's.
	return &Handler{inner: h.inner.WithGroup(name), grouped: true}
}
