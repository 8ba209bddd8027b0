package shim

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// parseMetrics turns a container's cgroup v2 files (as the guest agent
// read them) into containerd's cgroups v2 Metrics. Missing or unreadable
// figures are left zero.
func parseMetrics(files map[string]string) *stats.Metrics {
	m := &stats.Metrics{
		Pids:   &stats.PidsStat{Current: single(files["pids.current"]), Limit: single(files["pids.max"])},
		CPU:    &stats.CPUStat{},
		Memory: &stats.MemoryStat{},
	}
	// The flat-keyed files name their figures as the Metrics fields'
	// JSON (protobuf) names: "usage_usec", "kernel_stack", ...
	fromKeyed(files["cpu.stat"], m.CPU)
	fromKeyed(files["memory.stat"], m.Memory)
	m.Memory.Usage = single(files["memory.current"])
	m.Memory.UsageLimit = single(files["memory.max"])
	m.Memory.MaxUsage = single(files["memory.peak"])
	m.Memory.SwapUsage = single(files["memory.swap.current"])
	m.Memory.SwapLimit = single(files["memory.swap.max"])
	if ev := keyed(files["memory.events"]); len(ev) > 0 {
		m.MemoryEvents = &stats.MemoryEvents{Low: ev["low"], High: ev["high"], Max: ev["max"], Oom: ev["oom"], OomKill: ev["oom_kill"]}
	}
	if io := parseIOStat(files["io.stat"]); len(io) > 0 {
		m.Io = &stats.IOStat{Usage: io}
	}
	return m
}

// single reads a one-value file; "max" (no limit) is the largest value.
func single(s string) uint64 {
	s = strings.TrimSpace(s)
	if s == "max" {
		return math.MaxUint64
	}
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// keyed reads a flat-keyed file: "key value" lines.
func keyed(s string) map[string]uint64 {
	m := map[string]uint64{}
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			m[f[0]] = v
		}
	}
	return m
}

func fromKeyed(s string, into any) {
	b, err := json.Marshal(keyed(s))
	if err == nil {
		json.Unmarshal(b, into) // unknown keys are ignored
	}
}

// parseIOStat reads io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ..."
// lines.
func parseIOStat(s string) []*stats.IOEntry {
	var out []*stats.IOEntry
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		maj, minor, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		e := &stats.IOEntry{}
		var err1, err2 error
		e.Major, err1 = strconv.ParseUint(maj, 10, 64)
		e.Minor, err2 = strconv.ParseUint(minor, 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				e.Rbytes = n
			case "wbytes":
				e.Wbytes = n
			case "rios":
				e.Rios = n
			case "wios":
				e.Wios = n
			}
		}
		out = append(out, e)
	}
	return out
}

// marshalMetrics wraps the metrics for a StatsResponse, with the type URL
// containerd's typeurl gives them ("io.containerd.cgroups.v2.Metrics", no
// prefix: containerd 1.6 finds the type by that name).
func marshalMetrics(m *stats.Metrics) (*anypb.Any, error) {
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, fmt.Errorf("marshal metrics: %w", err)
	}
	return a, nil
}
