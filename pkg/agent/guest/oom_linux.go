package guest

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// watchOOM follows the oom_kill count in the memory.events of a running
// container's cgroup: the kernel notifies inotify watchers of every change
// to it. The runtime removes the cgroup as soon as the container ends, so
// the count is read as it rises, not at the end. killed tells, after the
// container exited, whether it rose; it also ends the watch.
func (s *Server) watchOOM(ctx context.Context, name string) (killed func() bool) {
	var oom atomic.Bool
	dir, err := s.containerCgroup(ctx, name)
	if err != nil {
		slog.Debug("no cgroup to watch for OOM kills", "container", name, "err", err)
		return oom.Load
	}
	events := filepath.Join(dir, "memory.events")
	check := func() {
		if b, err := os.ReadFile(events); err == nil && oomKills(b) > 0 {
			oom.Store(true)
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return oom.Load
	}
	f := os.NewFile(uintptr(fd), "inotify")
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		f.Close()
		return oom.Load
	}
	check() // one before the watch was set up
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			check()
		}
	}()
	return func() bool {
		check()
		f.Close()
		<-done
		return oom.Load()
	}
}

// oomKills reads the oom_kill count of a memory.events file.
func oomKills(events []byte) int {
	sc := bufio.NewScanner(bytes.NewReader(events))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("oom_kill ")); ok {
			n, _ := strconv.Atoi(string(v))
			return n
		}
	}
	return 0
}
