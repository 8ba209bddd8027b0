// Package qmp is a client of QEMU's machine protocol over a unix socket:
// commands from concurrent callers, and events delivered to subscribers
// that register before the command whose event they wait for, so that no
// event can be missed.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
)

// Error is an error QEMU returned for a command.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

// ErrClosed is returned once the connection is gone.
var ErrClosed = errors.New("qmp connection closed")

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

type message struct {
	ID     string          `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	QMP    json.RawMessage `json:"QMP"`
}

type subscriber struct {
	match func(Event) bool
	ch    chan Event
}

// Client is a QMP connection. Safe for concurrent use.
type Client struct {
	conn    net.Conn
	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	subs    map[uint64]*subscriber
	err     error
	done    chan struct{}
}

// Dial connects to the QMP socket at path and negotiates capabilities.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	c := &Client{conn: conn, pending: map[string]chan message{}, subs: map[uint64]*subscriber{}, done: make(chan struct{})}
	r := bufio.NewReaderSize(conn, 64<<10)
	greeting, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting from %s: %w", path, err)
	}
	var g message
	if json.Unmarshal(greeting, &g) != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s did not greet with QMP: %q", path, greeting)
	}
	go c.readLoop(r)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		c.mu.Lock()
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data}
			for _, s := range c.subs {
				if s.match(ev) {
					select {
					case s.ch <- ev:
					default: // subscriber not keeping up; it only needs one
					}
				}
			}
		} else if ch, ok := c.pending[m.ID]; ok {
			delete(c.pending, m.ID)
			ch <- m
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// Execute runs cmd with args (nil for none) and decodes its return value
// into result (nil to ignore it).
func (c *Client) Execute(ctx context.Context, cmd string, args, result any) error {
	return c.execute(ctx, cmd, args, result, nil)
}

// ExecuteWithFile is Execute with f's descriptor passed along (SCM_RIGHTS),
// as QEMU's getfd and add-fd want it.
func (c *Client) ExecuteWithFile(ctx context.Context, cmd string, args, result any, f *os.File) error {
	return c.execute(ctx, cmd, args, result, f)
}

func (c *Client) execute(ctx context.Context, cmd string, args, result any, f *os.File) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	ch := make(chan message, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	c.writeMu.Lock()
	if f != nil {
		err = writeWithFile(c.conn, append(b, '\n'), f)
	} else {
		_, err = c.conn.Write(append(b, '\n'))
	}
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, c.Err())
		}
		if m.Error != nil {
			m.Error.Command = cmd
			return m.Error
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decode result: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Subscribe delivers events for which match returns true until cancel is
// called. Subscribe before issuing the command that causes the event.
func (c *Client) Subscribe(match func(Event) bool) (<-chan Event, func()) {
	ch := make(chan Event, 8)
	c.mu.Lock()
	c.nextID++
	key := c.nextID
	c.subs[key] = &subscriber{match: match, ch: ch}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.subs, key)
		c.mu.Unlock()
	}
}

// WaitEvent waits on a subscription until an event arrives, ctx ends or
// the connection is lost.
func (c *Client) WaitEvent(ctx context.Context, ch <-chan Event) (Event, error) {
	select {
	case ev := <-ch:
		return ev, nil
	case <-ctx.Done():
		return Event{}, ctx.Err()
	case <-c.done:
		return Event{}, c.Err()
	}
}

// WatchDeviceDeleted implements hotplug.Monitor.
func (c *Client) WatchDeviceDeleted(id string) (func(context.Context) error, func()) {
	ch, stop := c.Subscribe(func(ev Event) bool {
		if ev.Name != "DEVICE_DELETED" {
			return false
		}
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(ev.Data, &d) == nil && d.Device == id
	})
	return func(ctx context.Context) error {
		_, err := c.WaitEvent(ctx, ch)
		return err
	}, stop
}

// Done is closed when the connection is lost or closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended (nil while it is up).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
