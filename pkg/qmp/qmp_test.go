package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeQEMU speaks enough QMP to test the client: it answers commands in
// reverse order of arrival when asked, emits events, and can hang up.
func fakeQEMU(t *testing.T, handle func(cmd string, args json.RawMessage, reply func(any), event func(string, any))) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var mu sync.Mutex
		send := func(v any) {
			b, _ := json.Marshal(v)
			mu.Lock()
			conn.Write(append(b, '\n'))
			mu.Unlock()
		}
		send(map[string]any{"QMP": map[string]any{"version": map[string]any{}}})
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute   string          `json:"execute"`
				ID        string          `json:"id"`
				Arguments json.RawMessage `json:"arguments"`
			}
			json.Unmarshal(sc.Bytes(), &req)
			if req.Execute == "qmp_capabilities" {
				send(map[string]any{"return": map[string]any{}, "id": req.ID})
				continue
			}
			id := req.ID
			go handle(req.Execute, req.Arguments,
				func(ret any) {
					if e, ok := ret.(error); ok {
						send(map[string]any{"error": map[string]any{"class": "GenericError", "desc": e.Error()}, "id": id})
						return
					}
					send(map[string]any{"return": ret, "id": id})
				},
				func(name string, data any) { send(map[string]any{"event": name, "data": data}) })
			if req.Execute == "hangup" {
				return
			}
		}
	}()
	return sock
}

func TestConcurrentCommandsAndErrors(t *testing.T) {
	sock := fakeQEMU(t, func(cmd string, args json.RawMessage, reply func(any), event func(string, any)) {
		var a struct{ N int }
		json.Unmarshal(args, &a)
		time.Sleep(time.Duration(10-a.N) * time.Millisecond) // answers out of order
		if cmd == "fail" {
			reply(errors.New("device busy"))
			return
		}
		reply(map[string]int{"n": a.N * 2})
	})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var res struct{ N int }
			if err := c.Execute(context.Background(), "double", map[string]int{"N": i}, &res); err != nil || res.N != 2*i {
				t.Errorf("double %d = %d, %v", i, res.N, err)
			}
		}(i)
	}
	wg.Wait()
	var qe *Error
	if err := c.Execute(context.Background(), "fail", nil, nil); !errors.As(err, &qe) || qe.Desc != "device busy" || qe.Command != "fail" {
		t.Fatalf("want typed QMP error, got %v", err)
	}
}

func TestEventNotMissedAndConnectionLoss(t *testing.T) {
	sock := fakeQEMU(t, func(cmd string, args json.RawMessage, reply func(any), event func(string, any)) {
		if cmd == "device_del" {
			// The event may arrive before the reply: the watch must catch it.
			event("DEVICE_DELETED", map[string]string{"device": "other"})
			event("DEVICE_DELETED", map[string]string{"device": "d1"})
		}
		if cmd != "hangup" {
			reply(map[string]any{})
		}
	})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	wait, stop := c.WatchDeviceDeleted("d1")
	defer stop()
	if err := c.Execute(context.Background(), "device_del", map[string]string{"id": "d1"}, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := wait(ctx); err != nil {
		t.Fatalf("DEVICE_DELETED missed: %v", err)
	}
	// A lost connection fails pending and later calls, and waiters.
	wait2, stop2 := c.WatchDeviceDeleted("never")
	defer stop2()
	if err := c.Execute(context.Background(), "hangup", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending command on hang-up: %v", err)
	}
	if err := wait2(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter on hang-up: %v", err)
	}
	if err := c.Execute(context.Background(), "x", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("command after hang-up: %v", err)
	}
	<-c.Done()
}

func TestDialBadSocket(t *testing.T) {
	if _, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("dial of missing socket succeeded")
	}
}
