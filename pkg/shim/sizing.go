package shim

import (
	"context"
	"log/slog"
	"strconv"

	"github.com/layervisor/layervisor/pkg/uvm"
)

// Pod-level resources CRI puts on the sandbox's spec (containerd's
// internal/cri/annotations): the pod's limits, overhead included.
const (
	annotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
	annotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
)

// guestBaseMB is what the guest itself needs beside its containers (the
// kernel, the agent, the runtime): a pod's memory limit is added to it.
const guestBaseMB = 256

// maxPodCPUs bounds the vCPUs a pod's CPU limit asks for, maxPodMemoryMB
// its RAM: the annotations come from whoever can reach containerd, and a
// VM larger than the host is refused by nothing else before QEMU starts.
const (
	maxPodCPUs     = 16
	maxPodMemoryMB = 64 << 10
)

// sizeForPod grows the VM to the pod's limits, when CRI gives them: RAM to
// the guest's base plus the pod's memory limit (rounded up to 64 MiB), vCPUs
// to the limit's quota/period rounded up. Never below the configured size.
// (A size other than the default's is a template key of its own: the first
// pod of a size boots cold.)
func sizeForPod(ctx context.Context, cfg *uvm.Config, ann map[string]string) {
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = uvm.DefaultMemoryMB
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = uvm.DefaultCPUs
	}
	if b, err := strconv.ParseInt(ann[annotationSandboxMemory], 10, 64); err == nil && b > 0 {
		mib := b >> 20 // rounded up without overflowing
		if b&(1<<20-1) != 0 {
			mib++
		}
		mb := int(min(mib, maxPodMemoryMB)) + guestBaseMB
		mb = min((mb+63)/64*64, maxPodMemoryMB)
		if mb > cfg.MemoryMB {
			slog.InfoContext(ctx, "utility VM sized for the pod's memory limit", "memoryMB", mb, "limit", b)
			cfg.MemoryMB = mb
		}
	}
	quota, qerr := strconv.ParseInt(ann[annotationSandboxCPUQuota], 10, 64)
	period, perr := strconv.ParseInt(ann[annotationSandboxCPUPeriod], 10, 64)
	if qerr == nil && perr == nil && quota > 0 && period > 0 {
		cpus := int(min((quota+period-1)/period, maxPodCPUs))
		if cpus > cfg.CPUs {
			slog.InfoContext(ctx, "utility VM sized for the pod's CPU limit", "cpus", cpus)
			cfg.CPUs = cpus
		}
	}
}
