package share

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

// QEMUHost implements Host: one virtiofsd per share, serving the directory
// on a socket under its state directory, then chardev-add (socket client)
// and device_add vhost-user-fs-pci on a free PCIe root port. Removal is
// device_del + DEVICE_DELETED, chardev-remove, then stopping the daemon.
// The VM's RAM must be a shared memory backend (memfd, share=on).
type QEMUHost struct {
	mon       hotplug.Monitor
	ports     *pciports.Allocator
	dir       string
	virtiofsd string

	mu      sync.Mutex
	daemons map[string]*daemon
}

type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{}
	socket string
	port   int
	view   string // read-only bind mount served instead of the directory; "" if none
}

// NewQEMUHost returns a Host for the VM behind mon. dir holds the daemons'
// sockets and logs; virtiofsd "" means DefaultVirtiofsd().
func NewQEMUHost(mon hotplug.Monitor, ports *pciports.Allocator, dir, virtiofsd string) *QEMUHost {
	if virtiofsd == "" {
		virtiofsd = DefaultVirtiofsd()
	}
	return &QEMUHost{mon: mon, ports: ports, dir: dir, virtiofsd: virtiofsd, daemons: map[string]*daemon{}}
}

func chardevID(tag string) string { return "vfsc-" + tag }
func deviceID(tag string) string  { return "vfs-" + tag }

// AddShare implements Host. A read-only share is served from a read-only
// bind mount of hostDir (see readOnlyView), so the host kernel refuses the
// guest's writes even if the guest remounts its side read-write.
func (h *QEMUHost) AddShare(ctx context.Context, tag, hostDir string, readOnly bool) (err error) {
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	if _, err := os.Stat(h.virtiofsd); err != nil {
		return fmt.Errorf("virtiofsd: %w (install virtiofsd or qemu-system-common: bash scripts/deps.sh)", err)
	}
	fl, err := flavourOf(ctx, h.virtiofsd)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		return err
	}
	d := &daemon{socket: filepath.Join(h.dir, "virtiofsd-"+tag+".sock"), exited: make(chan struct{})}
	source := hostDir
	if readOnly {
		d.view = filepath.Join(h.dir, "ro-"+tag)
		if err := readOnlyView(hostDir, d.view); err != nil {
			return err
		}
		u.Push("remove read-only view", func(context.Context) error { return removeView(d.view) })
		source = d.view
	}
	logPath := filepath.Join(h.dir, "virtiofsd-"+tag+".log")
	// We listen and hand virtiofsd the socket (--fd) instead of letting it
	// make its own: QEMU's connect then queues until virtiofsd accepts, and
	// there is no window between its bind and listen where connect is refused.
	listener, err := listenUnix(d.socket)
	if err != nil {
		return fmt.Errorf("virtiofsd socket: %w", err)
	}
	u.Push("remove socket", func(context.Context) error {
		if err := os.Remove(d.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	logf, err := os.Create(logPath)
	if err != nil {
		listener.Close()
		return err
	}
	defer logf.Close()
	d.cmd = exec.Command(h.virtiofsd, fl.args(source, readOnly)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.ExtraFiles = []*os.File{listener}
	setDaemonAttrs(d.cmd)
	err = d.cmd.Start()
	listener.Close() // virtiofsd holds it now; if it dies, QEMU's connection fails
	if err != nil {
		return fmt.Errorf("start %s: %w", h.virtiofsd, err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	u.Push("stop virtiofsd", func(context.Context) error { return stopDaemon(d) })
	// explain names virtiofsd's own words when it died under a QMP failure.
	explain := func(err error) error {
		select {
		case <-d.exited:
		case <-time.After(time.Second):
			return err
		}
		return fmt.Errorf("%w (virtiofsd exited: %s)", err, logTail(logPath))
	}
	port, err := h.ports.Allocate()
	if err != nil {
		return err
	}
	d.port = port
	u.Push("free root port", func(context.Context) error { return h.ports.Free(port) })
	chardev := map[string]any{"id": chardevID(tag), "backend": map[string]any{
		"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": d.socket}},
			"server": false,
		}}}
	if err := h.mon.Execute(ctx, "chardev-add", chardev, nil); err != nil {
		return explain(fmt.Errorf("chardev-add %s: %w", d.socket, err))
	}
	u.Push("chardev-remove", func(ctx context.Context) error {
		return h.mon.Execute(ctx, "chardev-remove", map[string]any{"id": chardevID(tag)}, nil)
	})
	dev := map[string]any{"driver": "vhost-user-fs-pci", "id": deviceID(tag), "chardev": chardevID(tag),
		"tag": tag, "bus": pciports.Name(port)}
	if err := h.mon.Execute(ctx, "device_add", dev, nil); err != nil {
		return explain(fmt.Errorf("device_add vhost-user-fs-pci on %s: %w", pciports.Name(port), err))
	}
	h.mu.Lock()
	h.daemons[tag] = d
	h.mu.Unlock()
	u.Commit()
	return nil
}

// RemoveShare implements Host. It continues past failures.
func (h *QEMUHost) RemoveShare(ctx context.Context, tag string) error {
	h.mu.Lock()
	d := h.daemons[tag]
	delete(h.daemons, tag)
	h.mu.Unlock()
	if d == nil {
		return fmt.Errorf("share %s: not added", tag)
	}
	var errs []error
	unplugged := true
	if err := hotplug.Unplug(ctx, h.mon, deviceID(tag)); err != nil {
		unplugged = false
		errs = append(errs, err)
	}
	if unplugged {
		if err := h.mon.Execute(ctx, "chardev-remove", map[string]any{"id": chardevID(tag)}, nil); err != nil {
			errs = append(errs, fmt.Errorf("chardev-remove %s: %w", chardevID(tag), err))
		}
		if err := h.ports.Free(d.port); err != nil {
			errs = append(errs, err)
		}
	} // else the device may still sit on its port: keep the port taken
	if err := stopDaemon(d); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close stops every daemon still running (the VM is gone or going).
func (h *QEMUHost) Close() error {
	h.mu.Lock()
	ds := h.daemons
	h.daemons = map[string]*daemon{}
	h.mu.Unlock()
	var errs []error
	for _, d := range ds {
		if err := stopDaemon(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Daemons reports the PIDs of running virtiofsd processes by tag.
func (h *QEMUHost) Daemons() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for tag, d := range h.daemons {
		out[tag] = d.cmd.Process.Pid
	}
	return out
}

// stopDaemon ends virtiofsd: it usually exits by itself once QEMU drops
// the connection; otherwise SIGTERM, then SIGKILL. Then it removes the
// read-only view it served.
func stopDaemon(d *daemon) error {
	if err := killDaemon(d); err != nil {
		return err
	}
	if d.view != "" {
		return removeView(d.view)
	}
	return nil
}

func killDaemon(d *daemon) error {
	defer os.Remove(d.socket)
	select {
	case <-d.exited:
		return nil
	case <-time.After(200 * time.Millisecond):
	}
	_ = d.cmd.Process.Signal(terminateSignal)
	select {
	case <-d.exited:
		return nil
	case <-time.After(3 * time.Second):
	}
	if err := d.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill virtiofsd %d: %w", d.cmd.Process.Pid, err)
	}
	<-d.exited
	return nil
}

// listenUnix makes a listening unix socket at path and returns it as a
// file for a child to inherit. The path stays when our copy is closed.
func listenUnix(path string) (*os.File, error) {
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return f, nil
}

func logTail(p string) string {
	b, _ := os.ReadFile(p)
	s := strings.TrimSpace(string(b))
	if len(s) > 800 {
		s = "…" + s[len(s)-800:]
	}
	if s == "" {
		return "(no output)"
	}
	slog.Debug("virtiofsd log", "path", p, "tail", s)
	return s
}
