package uvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/layervisor/layervisor/pkg/agent"
)

const openTimeout = 15 * time.Second

// Open attaches to a UVM another process started: its agent channel and
// QMP socket. Attachment controllers are not rebuilt (their state belongs
// to the process that started the VM): an opened UVM is for exec,
// inspection and Stop, and its SCSI, VPMem and Shares return ErrNotOwner.
// A UVM that belongs to a live process cannot be opened (ErrNotOwner, with
// the UVM for inspection).
func Open(ctx context.Context, root, id string) (*UVM, error) {
	st, err := Load(root, id)
	if err != nil {
		return nil, err
	}
	u := &UVM{cfg: st.Config, dir: Dir(root, id), state: *st, opened: true}
	if st.Owner != nil && st.Owner.Alive() {
		// Its owner holds the agent channel (one client at a time).
		return u, fmt.Errorf("uvm %s: %w: it belongs to %s and stops when that process ends", id, ErrNotOwner, st.Owner)
	}
	if st.Status != "running" || !alive(st.PID, u.dir) {
		return u, fmt.Errorf("%w: %s is %s", ErrNotReady, id, st.Status)
	}
	// Bounded: QEMU may die meanwhile, and its agent socket takes one
	// client at a time.
	dctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	if u.qmp, err = dialRetry(dctx, u.path("qmp.sock")); err != nil {
		return u, fmt.Errorf("uvm %s: %w", id, err)
	}
	if u.agent, err = agent.Dial(dctx, u.path("agent.sock")); err != nil {
		u.qmp.Close()
		return u, fmt.Errorf("uvm %s: %w", id, err)
	}
	return u, nil
}

// List returns the recorded state of every UVM under root, with the
// status corrected to "failed" for a running UVM whose QEMU is gone and
// for a UVM whose owner process is gone.
func List(root string) ([]State, error) {
	ents, err := os.ReadDir(filepath.Join(root, "uvms"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []State
	for _, e := range ents {
		st, err := Load(root, e.Name())
		if err != nil {
			continue
		}
		switch {
		case st.Owner != nil && !st.Owner.Alive():
			st.Status, st.Error = "failed", fmt.Sprintf("its owner, %s, is gone", st.Owner)
		case (st.Status == "running" || st.Status == "starting") && !alive(st.PID, Dir(root, e.Name())):
			st.Status, st.Error = "failed", "QEMU is not running"
		}
		out = append(out, *st)
	}
	return out, nil
}

// Process is a host process serving a UVM.
type Process struct {
	PID  int    `json:"pid"`
	UVM  string `json:"uvm"`
	Kind string `json:"kind"` // qemu or virtiofsd
}

// Processes lists the QEMU and virtiofsd processes of UVMs under root,
// found through /proc (none where there is no /proc).
func Processes(root string) []Process { return hostProcesses(root) }

// QEMUProcesses lists the PIDs of QEMU processes serving UVMs under root.
func QEMUProcesses(root string) []int {
	var pids []int
	for _, p := range hostProcesses(root) {
		if p.Kind == "qemu" {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

// GCReport says what GC did.
type GCReport struct {
	Reaped []string `json:"reaped,omitempty"` // UVMs whose QEMU or owner had died
	Killed []int    `json:"killed,omitempty"` // QEMU and virtiofsd processes no live UVM accounts for
	// Templates are the stale templates and half-saved ones removed.
	Templates []string `json:"templates,omitempty"`
	// Initrds are the initramfs files (in <root>/boot) no UVM or template
	// used any more, removed.
	Initrds []string `json:"initrds,omitempty"`
}

// GC reaps dead UVMs and kills the host processes of UVMs under root that
// are not alive. A UVM is dead when its owner process is gone (its lock is
// free), when a long-lived UVM's QEMU died, or when a create or start died
// half-way. Reaping kills its QEMU and virtiofsd, unmounts what is mounted
// under its directory and removes the directory (kept, processes killed,
// with h.KeepOnFailure). A UVM being created, started or used by a live
// process is left alone.
func GC(ctx context.Context, root string, h HostOptions) (GCReport, error) {
	var rep GCReport
	var errs []error
	ents, err := os.ReadDir(filepath.Join(root, "uvms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return rep, err
	}
	live := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		reaped, isLive, err := gcOne(ctx, root, e.Name(), h)
		live[e.Name()] = isLive
		if reaped {
			rep.Reaped = append(rep.Reaped, e.Name())
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Also processes of UVMs whose directory is gone.
	for _, p := range hostProcesses(root) {
		if live[p.UVM] {
			continue
		}
		if err := killPID(p.PID); err == nil {
			rep.Killed = append(rep.Killed, p.PID)
		}
	}
	rep.Templates, err = gcTemplates(root)
	errs = append(errs, err)
	// After the templates: a stale one no longer holds its initramfs.
	rep.Initrds, err = gcInitrds(root, time.Now())
	errs = append(errs, err)
	return rep, errors.Join(errs...)
}

// Reap does for one UVM what GC does for all: if id is dead (no live
// owner), its directory, shares and stray QEMU or virtiofsd processes go.
// Templates and other UVMs are left alone. It reports whether it reaped.
func Reap(ctx context.Context, root, id string, h HostOptions) (bool, error) {
	if err := ValidateID(id); err != nil {
		return false, err
	}
	reaped, isLive, err := gcOne(ctx, root, id, h)
	if !isLive {
		for _, p := range hostProcesses(root) {
			if p.UVM == id {
				killPID(p.PID)
			}
		}
	}
	return reaped, err
}

// gcOne reaps the UVM id if it is dead; isLive says its processes belong.
func gcOne(ctx context.Context, root, id string, h HostOptions) (reaped, isLive bool, err error) {
	dir := Dir(root, id)
	lk, ok, err := lockUVM(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, true, fmt.Errorf("uvm %s: %w", id, err)
	}
	if !ok {
		return false, true, nil // a live owner, or a create or start in progress
	}
	u := &UVM{dir: dir, lock: lk, cfg: Config{Host: h}}
	defer lk.release()
	st, err := Load(root, id)
	var why string
	switch {
	case errors.Is(err, ErrNotFound):
		why = "created half-way"
		u.cfg.ID = id
	case err != nil:
		return false, false, err // unreadable: leave it for a human
	case st.Owner != nil:
		why = fmt.Sprintf("its owner, %s, is gone", st.Owner)
	case st.Status == "running" && alive(st.PID, dir):
		return false, true, nil
	case st.Status == "created" || st.Status == "stopped":
		return false, false, nil
	case st.Status == "starting":
		why = "its start was interrupted"
	case st.Status == "failed":
		why = st.Error
	default:
		why = "QEMU is not running"
	}
	if st != nil {
		u.cfg, u.state = st.Config, *st
		u.cfg.Host = h
	}
	slog.Info("reaping UVM", "uvm", id, "why", why)
	u.kill()
	if st != nil {
		if u.state.Status != "failed" {
			u.state.Status, u.state.Error = "failed", why
		}
		if err := u.save(); err != nil {
			return true, false, err
		}
	}
	return true, false, u.Remove(ctx)
}

// kill ends the UVM's QEMU and virtiofsd processes and waits (briefly)
// for QEMU to go, so its files can be removed.
func (u *UVM) kill() {
	for _, p := range hostProcesses(filepath.Dir(filepath.Dir(u.dir))) {
		if p.UVM == u.cfg.ID {
			killPID(p.PID)
		}
	}
	if p := u.pid(); p > 0 && alive(p, u.dir) {
		killPID(p)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(u.pid(), u.dir) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}
