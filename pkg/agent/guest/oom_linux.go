package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// containersCgroup holds a cgroup per container the agent runs, the
// runtime's own cgroup for the container inside it.
//
// The runtime removes its cgroup the moment the container ends, so an OOM
// kill counted there can be gone before anyone reads it (a watch on it
// raced the removal and lost under load). The agent's cgroup outlives the
// container and memory.events counts are hierarchical: its oom_kill, read
// after the exit, tells whether the kernel killed a process of the
// container. The host's cgroupsPath means nothing in the guest (it may be
// a systemd slice) and is replaced.
const containersCgroup = "layervisor"

// placeCgroup sets the spec's cgroupsPath inside a cgroup of the agent's
// for container name. oomKilled, called once the container exited, tells
// whether an OOM kill happened in it since, and removes the cgroup.
func placeCgroup(spec *specs.Spec, name string) (oomKilled func() bool, err error) {
	dir := filepath.Join(cgroupRoot, containersCgroup, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup of container %s: %w", name, err)
	}
	// Its ancestors enable theirs at boot (PrepareCgroups).
	enableControllers(dir)
	events := filepath.Join(dir, "memory.events")
	before := oomKills(events)
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	spec.Linux.CgroupsPath = "/" + containersCgroup + "/" + name + "/container"
	return func() bool {
		killed := oomKills(events) > before
		// The runtime removed its cgroup unless it died first; a
		// cgroup still holding processes stays (gc's to kill).
		os.Remove(filepath.Join(dir, "container"))
		if err := os.Remove(dir); err != nil {
			slog.Debug("container cgroup left", "container", name, "err", err)
		}
		return killed
	}, nil
}

// PrepareCgroups makes the cgroup of the agent's containers and enables
// every controller down to it, at boot: a UVM restored from a template has
// them ready, and no container start pays for them.
func PrepareCgroups() {
	enableControllers(cgroupRoot)
	os.Mkdir(filepath.Join(cgroupRoot, containersCgroup), 0o755)
	enableControllers(filepath.Join(cgroupRoot, containersCgroup))
}

// enableControllers enables for dir's children every controller dir has,
// one at a time: one the kernel refuses does not keep the others off.
func enableControllers(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return
	}
	for _, c := range strings.Fields(string(b)) {
		os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0)
	}
}

// oomKills reads the oom_kill count of a memory.events file (0 when it
// cannot be read).
func oomKills(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	return parseOOMKills(b)
}

// parseOOMKills reads the oom_kill count of memory.events content.
func parseOOMKills(events []byte) int {
	sc := bufio.NewScanner(bytes.NewReader(events))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("oom_kill ")); ok {
			n, _ := strconv.Atoi(string(v))
			return n
		}
	}
	return 0
}
