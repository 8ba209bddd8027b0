package uvm

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/layervisor/layervisor/pkg/qmp"
)

const balloonPath = "/machine/peripheral/balloon"

// pollBalloonStats asks QEMU to refresh the guest's memory statistics
// (virtio-balloon stats queue) every two seconds, for MemoryUse.
func (u *UVM) pollBalloonStats(ctx context.Context) {
	err := u.qmp.Execute(ctx, "qom-set", map[string]any{"path": balloonPath, "property": "guest-stats-polling-interval", "value": 2}, nil)
	if err != nil {
		slog.Debug("balloon statistics unavailable", "uvm", u.cfg.ID, "err", err)
	}
}

// Memory is a UVM's memory use, in bytes; -1 where unknown.
type Memory struct {
	// HostRSS is the resident memory of its QEMU and virtiofsd processes,
	// guest pages included.
	HostRSS int64 `json:"hostRSS"`
	// GuestUsed is the guest's total memory less what it reports available.
	GuestUsed int64 `json:"guestUsed"`
}

// MemoryUse measures a running UVM's memory: host RSS from /proc, guest
// use from the balloon statistics over the UVM's second QMP monitor.
func MemoryUse(ctx context.Context, root, id string) Memory {
	m := Memory{HostRSS: -1, GuestUsed: -1}
	for _, p := range Processes(root) {
		if p.UVM != id {
			continue
		}
		if rss, err := vmRSS(p.PID); err == nil {
			m.HostRSS = max(m.HostRSS, 0) + rss
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	q, err := qmp.Dial(ctx, Dir(root, id)+"/stats.sock")
	if err != nil {
		return m
	}
	defer q.Close()
	var r struct {
		Stats map[string]int64 `json:"stats"`
	}
	if err := q.Execute(ctx, "qom-get", map[string]any{"path": balloonPath, "property": "guest-stats"}, &r); err != nil {
		return m
	}
	total, avail := r.Stats["stat-total-memory"], r.Stats["stat-available-memory"]
	if total > 0 && avail >= 0 && avail <= total {
		m.GuestUsed = total - avail
	}
	return m
}

// vmRSS reads VmRSS from /proc/<pid>/status.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}
