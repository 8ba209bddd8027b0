package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// blockingWriter never returns from Write until released.
type blockingWriter struct{ release chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

// fakeGuest returns a client whose guest is played by handle, called in
// turn for each frame the host sends; send writes a frame to the host
// from any goroutine.
func fakeGuest(t *testing.T, handle func(m *Message, send func(*Message) error)) *Client {
	host, guest := net.Pipe()
	t.Cleanup(func() { host.Close(); guest.Close() })
	var mu sync.Mutex
	send := func(m *Message) error {
		mu.Lock()
		defer mu.Unlock()
		return WriteFrame(guest, m)
	}
	go func() {
		r := bufio.NewReader(guest)
		for {
			m, err := ReadFrame(r)
			if err != nil {
				return
			}
			handle(m, send)
		}
	}()
	return NewClient(host)
}

// A call whose output nobody reads must not hold the replies of other
// calls on the shared channel, and its buffered output is bounded.
func TestStalledStreamDoesNotBlockOtherCalls(t *testing.T) {
	// A fake guest: floods the first call's stdout, then answers the
	// second call at once.
	c := fakeGuest(t, func(m *Message, send func(*Message) error) {
		switch m.Op {
		case OpExec:
			go func(id uint64) {
				chunk := []byte(strings.Repeat("x", 256<<10))
				for i := 0; i < (MaxStreamBuffer/len(chunk))+16; i++ {
					if send(&Message{ID: id, Stream: "stdout", Data: chunk}) != nil {
						return
					}
				}
			}(m.ID)
		case OpStat:
			res, _ := json.Marshal(StatResult{Size: 42})
			send(&Message{ID: m.ID, Done: true, Result: res})
		}
	})
	stalled := blockingWriter{release: make(chan struct{})}
	defer close(stalled.release)
	execCtx, cancelExec := context.WithCancel(context.Background())
	defer cancelExec()
	go c.Exec(execCtx, ExecRequest{Args: []string{"flood"}, Stdout: stalled})
	// Let the flood pass the buffer bound.
	time.Sleep(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := c.Stat(ctx, "/run/c/x")
	if err != nil || st.Size != 42 {
		t.Fatalf("a second call behind a stalled stream: %+v %v", st, err)
	}
}

// A guest that never answers fails a call after its deadline, naming it.
func TestCallDeadline(t *testing.T) {
	c := fakeGuest(t, func(*Message, func(*Message) error) {}) // never answers
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Stat(ctx, "/run/c/x"); err == nil || !strings.Contains(err.Error(), "stat") {
		t.Fatalf("stat on a silent guest: %v", err)
	}
}

// A signal sent right after the start, before the start request has gone
// out, names the started container's request, not request 0.
func TestSignalBeforeStartIsSent(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	c := NewClient(host)
	signalled := make(chan SignalArgs, 1)
	execID := make(chan uint64, 1)
	go func() {
		time.Sleep(200 * time.Millisecond) // the start request waits in the pipe
		r := bufio.NewReader(guest)
		var mu sync.Mutex
		var started uint64
		for {
			m, err := ReadFrame(r)
			if err != nil {
				return
			}
			switch m.Op {
			case OpExec:
				started = m.ID
				execID <- m.ID
			case OpSignal:
				var a SignalArgs
				json.Unmarshal(m.Args, &a)
				signalled <- a
				mu.Lock()
				WriteFrame(guest, &Message{ID: m.ID, Done: true})
				res, _ := json.Marshal(ExecResult{ExitCode: 137})
				WriteFrame(guest, &Message{ID: started, Done: true, Result: res})
				mu.Unlock()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ct := c.StartContainer(ctx, ContainerRequest{ID: "c1"})
	if err := ct.Signal(ctx, 9); err != nil {
		t.Fatal(err)
	}
	id := <-execID
	if a := <-signalled; a.Exec != id || a.Signal != 9 {
		t.Errorf("signal sent as %+v; want it for request %d", a, id)
	}
	if code, err := ct.Wait(); code != 137 || err != nil {
		t.Errorf("wait: %d %v", code, err)
	}
}

// Running closes when the guest says the process exists, before its exit;
// a process that never starts ends without it.
func TestRunning(t *testing.T) {
	next := make(chan struct{})
	n := 0
	c := fakeGuest(t, func(m *Message, send func(*Message) error) {
		if m.Op != OpExec {
			return
		}
		if n++; n == 1 { // the first starts, then ends when told
			send(&Message{ID: m.ID, Stream: StreamRunning})
			<-next
		}
		res, _ := json.Marshal(ExecResult{ExitCode: 127})
		send(&Message{ID: m.ID, Done: true, Result: res})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ct := c.StartContainer(ctx, ContainerRequest{ID: "c1"})
	select {
	case <-ct.Running():
	case <-ct.Done():
		t.Fatal("ended without running")
	case <-ctx.Done():
		t.Fatal("no running frame seen")
	}
	select {
	case <-ct.Done():
		t.Fatal("done before the guest said so")
	default:
	}
	close(next)
	<-ct.Done()
	never := c.StartContainer(ctx, ContainerRequest{ID: "c2"})
	<-never.Done()
	select {
	case <-never.Running():
		t.Error("a process that never started is reported running")
	default:
	}
}

// A hostile guest's running frames: repeated, for a request that is not a
// process's run, for no request at all. None of them may panic the host
// (a channel closed twice) or end a call.
func TestHostileRunningFrames(t *testing.T) {
	c := fakeGuest(t, func(m *Message, send func(*Message) error) {
		send(&Message{ID: 999, Stream: StreamRunning})
		switch m.Op {
		case OpExec:
			for i := 0; i < 3; i++ {
				send(&Message{ID: m.ID, Stream: StreamRunning})
			}
			res, _ := json.Marshal(ExecResult{ExitCode: 3})
			send(&Message{ID: m.ID, Done: true, Result: res})
			send(&Message{ID: m.ID, Stream: StreamRunning}) // after the end
		case OpStat:
			send(&Message{ID: m.ID, Stream: StreamRunning})
			res, _ := json.Marshal(StatResult{Size: 7})
			send(&Message{ID: m.ID, Done: true, Result: res})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ct := c.StartContainer(ctx, ContainerRequest{ID: "c1"})
	if code, err := ct.Wait(); code != 3 || err != nil {
		t.Fatalf("wait: %d %v", code, err)
	}
	<-ct.Running()
	if st, err := c.Stat(ctx, "/run/c/x"); err != nil || st.Size != 7 {
		t.Fatalf("stat among running frames: %+v %v", st, err)
	}
	if st, err := c.Stat(ctx, "/run/c/y"); err != nil || st.Size != 7 {
		t.Fatalf("a later call: %+v %v", st, err)
	}
}
