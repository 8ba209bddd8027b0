//go:build linux

// Package hotplugtest starts a bare, paused QEMU (no guest) with the
// hot-plug topology of a utility VM and a minimal QMP monitor for it, so
// the controllers' QEMU adapters can be checked against real QEMU in tests
// without a booted guest. Only host-side steps can be verified this way:
// PCI unplug needs a running guest to acknowledge it.
package hotplugtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
)

// QEMU is a paused QEMU process and its monitor. It implements
// hotplug.Monitor.
type QEMU struct {
	cmd  *exec.Cmd
	conn net.Conn
	dead chan struct{}

	execMu sync.Mutex // one command in flight
	mu     sync.Mutex
	reply  chan json.RawMessage
	events map[string][]chan struct{} // DEVICE_DELETED watchers by device id
}

// Start launches QEMU with RAM 256M (memfd, shared), maxmem 4G, 4 PCIe root
// ports rp0…rp3 and one virtio-scsi controller scsi0. It skips the test
// when QEMU is missing outside CI. QEMU is killed at test cleanup.
func Start(t testing.TB) *QEMU {
	t.Helper()
	bin := testutil.NeedTool(t, "qemu-system-x86_64")
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	args := []string{"-M", "q35,memory-backend=ram", "-S", "-display", "none", "-nodefaults", "-no-user-config",
		"-m", "256M,slots=8,maxmem=4G",
		"-object", "memory-backend-memfd,id=ram,size=256M,share=on",
		"-device", "virtio-scsi-pci,id=scsi0",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	for i := 0; i < 4; i++ {
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=rp%d,chassis=%d,slot=%d", i, i+1, i+1))
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	q := &QEMU{cmd: cmd, dead: make(chan struct{}), reply: make(chan json.RawMessage, 1), events: map[string][]chan struct{}{}}
	go func() { _ = cmd.Wait(); close(q.dead) }()
	t.Cleanup(func() { q.Kill() })
	for i := 0; ; i++ {
		var err error
		q.conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		if i > 500 {
			t.Fatalf("QMP socket: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := bufio.NewReader(q.conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		t.Fatal(err)
	}
	go q.read(r)
	if err := q.Execute(context.Background(), "qmp_capabilities", nil, nil); err != nil {
		t.Fatal(err)
	}
	return q
}

// Kill kills QEMU (as if it crashed) and waits for it.
func (q *QEMU) Kill() {
	_ = q.cmd.Process.Kill()
	<-q.dead
	if q.conn != nil {
		q.conn.Close()
	}
}

func (q *QEMU) read(r *bufio.Reader) {
	defer close(q.reply)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var msg struct {
			Event string `json:"event"`
			Data  struct {
				Device string `json:"device"`
			} `json:"data"`
		}
		if json.Unmarshal(line, &msg) == nil && msg.Event != "" {
			if msg.Event == "DEVICE_DELETED" {
				q.mu.Lock()
				for _, ch := range q.events[msg.Data.Device] {
					close(ch)
				}
				delete(q.events, msg.Data.Device)
				q.mu.Unlock()
			}
			continue
		}
		q.reply <- json.RawMessage(line)
	}
}

// Execute implements hotplug.Monitor.
func (q *QEMU) Execute(ctx context.Context, cmd string, args, result any) error {
	q.execMu.Lock()
	defer q.execMu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case line, ok := <-q.reply:
		if !ok {
			return fmt.Errorf("qmp %s: connection lost (QEMU exited)", cmd)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return err
		}
		if resp.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		}
		if result != nil {
			return json.Unmarshal(resp.Return, result)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WatchDeviceDeleted implements hotplug.Monitor.
func (q *QEMU) WatchDeviceDeleted(id string) (func(context.Context) error, func()) {
	ch := make(chan struct{})
	q.mu.Lock()
	q.events[id] = append(q.events[id], ch)
	q.mu.Unlock()
	wait := func(ctx context.Context) error {
		select {
		case <-ch:
			return nil
		case <-q.dead:
			return errors.New("QEMU exited")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return wait, func() {}
}
