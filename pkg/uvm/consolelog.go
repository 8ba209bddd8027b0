package uvm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/layervisor/layervisor/pkg/qmp"
)

// The guest's serial console is untrusted output: a guest can print without
// end. QEMU does not write it to a file (its file chardev has no size
// limit, and a pipe to a reader that is slow or gone would block QEMU): it
// goes to an in-memory ring buffer chardev of consoleRingSize bytes, which
// never blocks the guest and keeps the latest output when full. The process
// holding the UVM's QMP monitor drains the ring into debug/console.log: the
// starting process (the owner) while it runs, and the process that stops a
// long-lived UVM once more before it stops it; between those, a long-lived
// UVM keeps its latest output in the ring. console.log is a cappedFile: at
// most consoleLogMax bytes, then it moves to console.log.1 and starts anew,
// so at most 2*consoleLogMax bytes are on disk.
const (
	consoleChardev  = "console"
	consoleRingSize = 256 << 10 // a power of two, as QEMU wants
	consoleLogMax   = 2 << 20
	consoleChunk    = 64 << 10 // one ringbuf-read
	consolePoll     = 500 * time.Millisecond
	consoleLog      = "debug/console.log"

	// stderrKeep is how much of QEMU's stderr is kept in memory, at the
	// start and again at the end (see headTail).
	stderrKeep = 32 << 10
)

// cappedFile appends to a file and keeps it at most max bytes: a write that
// would pass max first moves the file to <path>.1 (replacing an older one)
// and starts a new one. At most 2*max bytes are on disk.
type cappedFile struct {
	path    string
	max     int64
	f       *os.File
	size    int64
	written int64 // bytes given to Write, kept or not
}

func openCappedFile(path string, max int64) (*cappedFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	return &cappedFile{path: path, max: max, f: f, size: st.Size()}, nil
}

// Write keeps p, or its last max bytes when p alone is larger; it reports
// all of p as written.
func (c *cappedFile) Write(p []byte) (int, error) {
	n := len(p)
	c.written += int64(n)
	if int64(len(p)) > c.max {
		p = p[int64(len(p))-c.max:]
	}
	if c.size+int64(len(p)) > c.max {
		if err := c.rotate(); err != nil {
			return 0, err
		}
	}
	w, err := c.f.Write(p)
	c.size += int64(w)
	if err != nil {
		return 0, fmt.Errorf("log %s: %w", c.path, err)
	}
	return n, nil
}

func (c *cappedFile) rotate() error {
	c.f.Close()
	if err := os.Rename(c.path, c.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate log %s: %w", c.path, err)
	}
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("rotate log %s: %w", c.path, err)
	}
	c.f, c.size = f, 0
	return nil
}

func (c *cappedFile) Close() error { return c.f.Close() }

// headTail keeps the first and the last keep bytes written to it (QEMU's
// stderr: how it started and how it ended), whatever the total.
type headTail struct {
	mu      sync.Mutex
	keep    int
	head    []byte
	tail    []byte
	dropped int64
}

func newHeadTail(keep int) *headTail { return &headTail{keep: keep} }

func (h *headTail) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(p)
	if k := min(h.keep-len(h.head), len(p)); k > 0 {
		h.head = append(h.head, p[:k]...)
		p = p[k:]
	}
	h.tail = append(h.tail, p...)
	// Trim only past twice the size, so a stream of small writes does
	// not copy the tail each time.
	if len(h.tail) > 2*h.keep {
		cut := len(h.tail) - h.keep
		h.dropped += int64(cut)
		h.tail = append([]byte(nil), h.tail[cut:]...)
	}
	return n, nil
}

func (h *headTail) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	tail, dropped := h.tail, h.dropped
	if len(tail) > h.keep {
		dropped += int64(len(tail) - h.keep)
		tail = tail[len(tail)-h.keep:]
	}
	if dropped == 0 {
		return string(h.head) + string(tail)
	}
	return string(h.head) + "\n[… " + strconv.FormatInt(dropped, 10) + " bytes not kept …]\n" + string(tail)
}

// consoleDrain moves the console ring's content into the console log, every
// consolePoll and on demand, until closed or QEMU's monitor goes away.
type consoleDrain struct {
	q     *qmp.Client
	mu    sync.Mutex // one reader of the ring at a time; guards log
	log   *cappedFile
	stopc chan struct{}
	done  chan struct{}
	once  sync.Once
}

func startConsoleDrain(q *qmp.Client, path string) (*consoleDrain, error) {
	log, err := openCappedFile(path, consoleLogMax)
	if err != nil {
		return nil, err
	}
	d := &consoleDrain{q: q, log: log, stopc: make(chan struct{}), done: make(chan struct{})}
	go d.loop()
	return d, nil
}

func (d *consoleDrain) loop() {
	defer close(d.done)
	t := time.NewTicker(consolePoll)
	defer t.Stop()
	for {
		select {
		case <-d.stopc:
			return
		case <-d.q.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.drain(ctx)
		cancel()
	}
}

// drain moves what the ring holds now into the log: at most one ring's
// worth, so a guest that prints without pause cannot keep it busy.
func (d *consoleDrain) drain(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.log == nil {
		return nil // closed
	}
	return drainRing(ctx, d.q, d.log)
}

func drainRing(ctx context.Context, q *qmp.Client, w *cappedFile) error {
	for n := 0; n < consoleRingSize; {
		var s string
		args := map[string]any{"device": consoleChardev, "size": consoleChunk, "format": "base64"}
		if err := q.Execute(ctx, "ringbuf-read", args, &s); err != nil {
			return fmt.Errorf("read the console ring: %w", err)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("read the console ring: %w", err)
		}
		if len(b) == 0 {
			return nil
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		n += len(b)
	}
	return nil
}

// close stops the loop, drains the ring a last time (QEMU may still be
// there: bounded, it may also be hung) and closes the log. Idempotent.
func (d *consoleDrain) close() {
	d.once.Do(func() {
		close(d.stopc)
		<-d.done
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		d.drain(ctx)
		d.mu.Lock()
		d.log.Close()
		d.log = nil
		d.mu.Unlock()
	})
}

// drainConsoleOnce drains the console ring of a UVM this process did not
// start (a long-lived one being stopped) into its console log.
func drainConsoleOnce(ctx context.Context, q *qmp.Client, path string) error {
	log, err := openCappedFile(path, consoleLogMax)
	if err != nil {
		return err
	}
	defer log.Close()
	return drainRing(ctx, q, log)
}
