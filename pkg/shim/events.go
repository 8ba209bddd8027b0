package shim

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Topics of the task events a shim publishes.
const (
	TopicTaskCreate = "/tasks/create"
	TopicTaskStart  = "/tasks/start"
	TopicTaskExit   = "/tasks/exit"
	TopicTaskDelete = "/tasks/delete"

	TopicTaskExecAdded   = "/tasks/exec-added"
	TopicTaskExecStarted = "/tasks/exec-started"
	TopicTaskPaused      = "/tasks/paused"
	TopicTaskResumed     = "/tasks/resumed"
	TopicTaskOOM         = "/tasks/oom"
)

// publisher forwards task events to containerd's ttrpc events service
// (containerd.services.events.ttrpc.v1.Events, served by 1.6 and 2.x at
// TTRPC_ADDRESS), in order, from one goroutine, as containerd's own
// pkg/shim publisher does. An event that cannot be delivered after a few
// tries is logged and dropped.
type publisher struct {
	addr, ns string
	q        chan queued
	done     chan struct{}

	mu     sync.Mutex
	closed bool
}

const publishTries = 5

// queued is an event and the context of the request that published it,
// whose attributes its log records carry (package logctx).
type queued struct {
	ctx context.Context
	env *types.Envelope
}

func newPublisher(addr, ns string) *publisher {
	p := &publisher{addr: strings.TrimPrefix(addr, "unix://"), ns: ns, q: make(chan queued, 256), done: make(chan struct{})}
	go p.run()
	return p
}

// publish queues an event; it never blocks the task service for long. ctx
// is only for the log: the event outlives the request.
func (p *publisher) publish(ctx context.Context, topic string, ev proto.Message) {
	// The type URL is the message's full name without a prefix, as
	// containerd's typeurl writes it: containerd 1.6 (gogo typeurl) finds
	// no type for "type.googleapis.com/…", so its clients (ctr events, CRI)
	// would drop the event.
	b, err := proto.Marshal(ev)
	a := &anypb.Any{TypeUrl: string(ev.ProtoReflect().Descriptor().FullName()), Value: b}
	if err != nil {
		slog.ErrorContext(ctx, "marshal event", "topic", topic, "err", err)
		return
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: p.ns, Topic: topic, Event: a}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		slog.WarnContext(ctx, "shim closing: event not published", "topic", topic)
		return
	}
	select {
	case p.q <- queued{ctx: context.WithoutCancel(ctx), env: env}:
	case <-time.After(5 * time.Second):
		slog.ErrorContext(ctx, "event queue full: event dropped", "topic", topic)
	}
}

func (p *publisher) run() {
	defer close(p.done)
	var c *ttrpc.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for qe := range p.q {
		env := qe.env
		if p.addr == "" {
			slog.WarnContext(qe.ctx, "no TTRPC_ADDRESS: event not published", "topic", env.Topic)
			continue
		}
		for try := 1; ; try++ {
			if c == nil {
				conn, err := net.DialTimeout("unix", p.addr, 5*time.Second)
				if err == nil {
					c = ttrpc.NewClient(conn)
				}
			}
			err := fmt.Errorf("dial %s", p.addr)
			if c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err = eventsapi.NewTTRPCEventsClient(c).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
				cancel()
			}
			if err == nil {
				slog.DebugContext(qe.ctx, "event published", "topic", env.Topic)
				break
			}
			if c != nil {
				c.Close()
				c = nil
			}
			if try == publishTries {
				slog.ErrorContext(qe.ctx, "publish event", "topic", env.Topic, "err", err)
				break
			}
			time.Sleep(time.Duration(try) * 200 * time.Millisecond)
		}
	}
}

// close delivers what is queued (bounded) and stops.
func (p *publisher) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.q)
	}
	p.mu.Unlock()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}
