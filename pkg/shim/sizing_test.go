package shim

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/pkg/uvm"
)

func TestSizeForPod(t *testing.T) {
	for _, c := range []struct {
		ann       map[string]string
		mem, cpus int
	}{
		{nil, 512, 2},
		{map[string]string{annotationSandboxMemory: "0"}, 512, 2},
		{map[string]string{annotationSandboxMemory: "134217728"}, 512, 2},                                      // 128 MiB + base fits
		{map[string]string{annotationSandboxMemory: "1073741824"}, 1280, 2},                                    // 1 GiB + 256
		{map[string]string{annotationSandboxMemory: "1000000000"}, 1216, 2},                                    // rounded up to 64 MiB
		{map[string]string{annotationSandboxCPUQuota: "250000", annotationSandboxCPUPeriod: "100000"}, 512, 3}, // 2.5 CPUs
		{map[string]string{annotationSandboxCPUQuota: "-1", annotationSandboxCPUPeriod: "100000"}, 512, 2},     // unlimited
		{map[string]string{annotationSandboxCPUQuota: "9999999999", annotationSandboxCPUPeriod: "1"}, 512, maxPodCPUs},
		{map[string]string{annotationSandboxMemory: "lots"}, 512, 2},
		{map[string]string{annotationSandboxMemory: "9223372036854775807"}, maxPodMemoryMB, 2}, // hostile: capped, no overflow
		{map[string]string{annotationSandboxMemory: "1000000000000000"}, maxPodMemoryMB, 2},    // 1 PB: capped
	} {
		cfg := uvm.Config{} // the defaults: 512 MiB, 2 CPUs
		sizeForPod(context.Background(), &cfg, c.ann)
		if cfg.MemoryMB != c.mem || cfg.CPUs != c.cpus {
			t.Errorf("%v: %d MiB %d CPUs, want %d %d", c.ann, cfg.MemoryMB, cfg.CPUs, c.mem, c.cpus)
		}
	}
}
