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

// A call whose output nobody reads must not hold the replies of other
// calls on the shared channel, and its buffered output is bounded.
func TestStalledStreamDoesNotBlockOtherCalls(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	c := NewClient(host)
	// A fake guest: floods the first call's stdout, then answers the
	// second call at once.
	go func() {
		r := bufio.NewReader(guest)
		var mu sync.Mutex
		for {
			m, err := ReadFrame(r)
			if err != nil {
				return
			}
			switch m.Op {
			case OpExec:
				go func(id uint64) {
					chunk := []byte(strings.Repeat("x", 256<<10))
					for i := 0; i < (MaxStreamBuffer/len(chunk))+16; i++ {
						mu.Lock()
						err := WriteFrame(guest, &Message{ID: id, Stream: "stdout", Data: chunk})
						mu.Unlock()
						if err != nil {
							return
						}
					}
				}(m.ID)
			case OpStat:
				res, _ := json.Marshal(StatResult{Size: 42})
				mu.Lock()
				WriteFrame(guest, &Message{ID: m.ID, Done: true, Result: res})
				mu.Unlock()
			}
		}
	}()
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
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() { // reads and never answers
		r := bufio.NewReader(guest)
		for {
			if _, err := ReadFrame(r); err != nil {
				return
			}
		}
	}()
	c := NewClient(host)
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
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	c := NewClient(host)
	next := make(chan struct{})
	go func() {
		r := bufio.NewReader(guest)
		for n := 0; ; n++ {
			m, err := ReadFrame(r)
			if err != nil {
				return
			}
			if m.Op != OpExec {
				continue
			}
			if n == 0 { // the first starts, then ends when told
				WriteFrame(guest, &Message{ID: m.ID, Stream: StreamRunning})
				<-next
			}
			res, _ := json.Marshal(ExecResult{ExitCode: 127})
			WriteFrame(guest, &Message{ID: m.ID, Done: true, Result: res})
		}
	}()
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
