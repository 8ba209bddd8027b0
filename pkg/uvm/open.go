package uvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/layervisor/layervisor/pkg/agent"
)

// Open attaches to a UVM another process started: its agent channel and
// QMP socket. Attachment controllers are not rebuilt (their state belongs
// to the process that started the VM), so an opened UVM is for exec,
// inspection and Stop.
func Open(ctx context.Context, root, id string) (*UVM, error) {
	st, err := Load(root, id)
	if err != nil {
		return nil, err
	}
	u := &UVM{cfg: st.Config, dir: Dir(root, id), state: *st}
	if st.Status != "running" || !alive(st.PID, u.dir) {
		return u, fmt.Errorf("%w: %s is %s", ErrNotReady, id, st.Status)
	}
	if u.qmp, err = dialRetry(ctx, u.path("qmp.sock")); err != nil {
		return u, fmt.Errorf("uvm %s: %w", id, err)
	}
	if u.agent, err = agent.Dial(ctx, u.path("agent.sock")); err != nil {
		u.qmp.Close()
		return u, fmt.Errorf("uvm %s: %w", id, err)
	}
	return u, nil
}

// List returns the recorded state of every UVM under root, with the
// status corrected to "failed" for a running UVM whose QEMU is gone.
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
		if (st.Status == "running" || st.Status == "starting") && !alive(st.PID, Dir(root, e.Name())) {
			st.Status, st.Error = "failed", "QEMU is not running"
		}
		out = append(out, *st)
	}
	return out, nil
}

// GCReport says what GC did.
type GCReport struct {
	Reaped []string `json:"reaped,omitempty"` // UVMs whose QEMU had died
	Killed []int    `json:"killed,omitempty"` // orphan QEMU processes
}

// GC reaps UVMs whose QEMU died (their state is removed unless
// LAYERVISOR_KEEP_UVM_ON_FAILURE=1) and kills QEMU processes of UVMs under
// root that no state records as running.
func GC(ctx context.Context, root string) (GCReport, error) {
	var rep GCReport
	var errs []error
	sts, err := List(root)
	if err != nil {
		return rep, err
	}
	running := map[int]bool{}
	for _, st := range sts {
		if st.Status == "running" || st.Status == "starting" {
			running[st.PID] = true
			continue
		}
		if st.Status == "failed" {
			u := &UVM{cfg: st.Config, dir: Dir(root, st.Config.ID), state: st}
			u.save()
			if err := u.Remove(ctx); err != nil {
				errs = append(errs, err)
			}
			rep.Reaped = append(rep.Reaped, st.Config.ID)
		}
	}
	for _, pid := range QEMUProcesses(root) {
		if running[pid] {
			continue
		}
		if err := killPID(pid); err == nil {
			rep.Killed = append(rep.Killed, pid)
		}
	}
	return rep, errors.Join(errs...)
}

// QEMUProcesses lists the QEMU processes serving UVMs under root, found by
// their command lines in /proc (none where there is no /proc).
func QEMUProcesses(root string) []int {
	prefix := filepath.Join(root, "uvms") + "/"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), prefix) || !strings.Contains(string(b), "qmp.sock") {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}
