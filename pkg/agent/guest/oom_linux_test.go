package guest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestOOMKills(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		content string
		want    int
	}{
		{"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", 2},
		{"low 0\noom 1\n", 0},
		{"oom_kill_x 9\noom_kill 7", 7},
	} {
		f := filepath.Join(dir, "memory.events")
		if err := os.WriteFile(f, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := oomKills(f); got != c.want {
			t.Errorf("oomKills(%q) = %d, want %d", c.content, got, c.want)
		}
	}
	if got := oomKills(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("a missing file: %d, want 0", got)
	}
}

// A container id names the cgroup placeCgroup makes under
// /sys/fs/cgroup/layervisor, and its runtime state: a hostile one must not
// reach outside them ("..", a slash) or be empty or unbounded.
func TestContainerIDCannotLeaveTheCgroup(t *testing.T) {
	for _, id := range []string{"", ".", "..", "../x", "a/b", "/abs", "-flag", "x\n", string(make([]byte, 129))} {
		if validContainerID.MatchString(id) {
			t.Errorf("container id %q accepted", id)
		}
	}
	for _, id := range []string{"c1", "lv-oom", "5f1d2c3b4a5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8", "a.b_c-d"} {
		if !validContainerID.MatchString(id) {
			t.Errorf("container id %q refused", id)
		}
	}
}
