package shim

import (
	"math"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
)

func TestParseMetrics(t *testing.T) {
	m := parseMetrics(map[string]string{
		"memory.current": "1069056\n",
		"memory.max":     "max\n",
		"memory.stat":    "anon 204800\nfile 602112\nkernel_stack 16384\npgfault 1234\nunknown_key 7\n",
		"memory.events":  "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
		"cpu.stat":       "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\nnr_periods 0\n",
		"pids.current":   "2\n",
		"pids.max":       "max\n",
		"io.stat":        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=512 wbytes=0 rios=1 wios=0\n",
	})
	if m.Memory.Usage != 1069056 || m.Memory.UsageLimit != math.MaxUint64 || m.Memory.Anon != 204800 || m.Memory.File != 602112 ||
		m.Memory.KernelStack != 16384 || m.Memory.Pgfault != 1234 {
		t.Errorf("memory: %+v", m.Memory)
	}
	if m.MemoryEvents.Max != 3 || m.MemoryEvents.OomKill != 1 {
		t.Errorf("memory events: %+v", m.MemoryEvents)
	}
	if m.CPU.UsageUsec != 12345 || m.CPU.UserUsec != 10000 || m.CPU.SystemUsec != 2345 {
		t.Errorf("cpu: %+v", m.CPU)
	}
	if m.Pids.Current != 2 || m.Pids.Limit != math.MaxUint64 {
		t.Errorf("pids: %+v", m.Pids)
	}
	if len(m.Io.Usage) != 2 || m.Io.Usage[0].Major != 8 || m.Io.Usage[0].Wbytes != 8192 || m.Io.Usage[1].Minor != 16 || m.Io.Usage[1].Rbytes != 512 {
		t.Errorf("io: %+v", m.Io.Usage)
	}

	a, err := marshalMetrics(m)
	if err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != "io.containerd.cgroups.v2.Metrics" {
		t.Errorf("type URL %q", a.TypeUrl)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := v.(*stats.Metrics); !ok || got.Memory.Usage != 1069056 {
		t.Errorf("round trip: %T %+v", v, v)
	}
}

func TestParseMetricsEmpty(t *testing.T) {
	m := parseMetrics(nil)
	if m.Memory == nil || m.CPU == nil || m.Pids == nil || m.Io != nil || m.MemoryEvents != nil {
		t.Errorf("%+v", m)
	}
}
