package runspec

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	units "github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CgroupParent is the cgroup (and containerd-style namespace) every run's
// cgroup is made under: /layervisor/<id>.
const CgroupParent = "layervisor"

// MinMemory is the smallest --memory a run accepts: below it the runtime's
// own start does not fit (Docker's floor too).
const MinMemory = 6 << 20

// Network modes.
const (
	NetworkNone = "none" // a network namespace of its own with only lo
	NetworkHost = "host" // the host's (or, in a utility VM, the guest's)
)

// Confinement is what the run flags change in the default confinement,
// named as in `nerdctl run`.
type Confinement struct {
	User            string   // -u: name, uid, name:group, uid:gid
	TTY             bool     // -t
	Network         string   // --network none|host ("" = none)
	Hostname        string   // --hostname ("" = the container's id)
	Memory          string   // --memory, e.g. 64m ("" = no limit)
	CPUs            float64  // --cpus (0 = no limit)
	PidsLimit       int64    // --pids-limit (0 = no limit)
	ReadOnly        bool     // --read-only
	CapAdd, CapDrop []string // --cap-add, --cap-drop (ALL allowed)
	// SecurityOpts are --security-opt values: seccomp=unconfined,
	// seccomp=PATH (an OCI LinuxSeccomp JSON file), no-new-privileges.
	SecurityOpts []string
}

func (f Confinement) apply(ctx context.Context, c *containers.Container, s *specs.Spec) error {
	var opts []oci.SpecOpts
	if f.TTY {
		opts = append(opts, oci.WithTTY)
	}
	switch f.Network {
	case "", NetworkNone:
	case NetworkHost:
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace))
	default:
		return fmt.Errorf("--network %q: want none or host", f.Network)
	}
	if f.Hostname != "" {
		opts = append(opts, oci.WithHostname(f.Hostname))
	}
	if f.Memory != "" {
		n, err := units.RAMInBytes(f.Memory)
		if err != nil {
			return fmt.Errorf("--memory %q: %w", f.Memory, err)
		}
		if n < MinMemory {
			return fmt.Errorf("--memory %q: below the minimum of %d MiB", f.Memory, MinMemory>>20)
		}
		opts = append(opts, oci.WithMemoryLimit(uint64(n)))
	}
	if f.CPUs < 0 {
		return fmt.Errorf("--cpus %v: must be positive", f.CPUs)
	}
	if f.CPUs > 0 {
		const period = 100000
		quota := int64(f.CPUs * period)
		if quota < 1000 {
			return fmt.Errorf("--cpus %v: below the minimum of 0.01", f.CPUs)
		}
		opts = append(opts, oci.WithCPUCFS(quota, period))
	}
	if f.PidsLimit < 0 {
		return fmt.Errorf("--pids-limit %d: must be positive", f.PidsLimit)
	}
	if f.PidsLimit > 0 {
		opts = append(opts, oci.WithPidsLimit(f.PidsLimit))
	}
	if f.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if err := oci.ApplyOpts(ctx, nil, c, s, opts...); err != nil {
		return err
	}
	if err := f.capabilities(s.Process.Capabilities); err != nil {
		return err
	}
	s.Linux.Seccomp = nil
	profile, newPrivs := "", false
	for _, o := range f.SecurityOpts {
		k, v, _ := strings.Cut(o, "=")
		switch {
		case k == "seccomp" && v != "":
			profile = v
		case k == "no-new-privileges" && (v == "" || v == "true"):
			s.Process.NoNewPrivileges = true
		case k == "no-new-privileges" && v == "false":
			newPrivs = true
		default:
			return fmt.Errorf("--security-opt %q: want seccomp=unconfined|PATH or no-new-privileges[=true|false]", o)
		}
	}
	if newPrivs {
		s.Process.NoNewPrivileges = false
	}
	switch profile {
	case "":
		// Computed after the capabilities: the profile allows the
		// syscalls that go with the capabilities the process has.
		s.Linux.Seccomp = seccomp.DefaultProfile(s)
	case "unconfined":
	default:
		b, err := os.ReadFile(profile)
		if err != nil {
			return fmt.Errorf("--security-opt seccomp=%s: %w", profile, err)
		}
		var sc specs.LinuxSeccomp
		if err := json.Unmarshal(b, &sc); err != nil {
			return fmt.Errorf("--security-opt seccomp=%s: not an OCI seccomp profile: %w", profile, err)
		}
		if sc.DefaultAction == "" {
			return fmt.Errorf("--security-opt seccomp=%s: no defaultAction: not an OCI seccomp profile", profile)
		}
		s.Linux.Seccomp = &sc
	}
	return nil
}

// capabilities applies --cap-drop, then --cap-add (docker's order), to
// the bounding, effective and permitted sets.
func (f Confinement) capabilities(caps *specs.LinuxCapabilities) error {
	known := knownCaps()
	norm := func(flag string, names []string) ([]string, bool, error) {
		var out []string
		all := false
		for _, n := range names {
			u := strings.ToUpper(n)
			if u == "ALL" {
				all = true
				continue
			}
			if !strings.HasPrefix(u, "CAP_") {
				u = "CAP_" + u
			}
			if known != nil && !slices.Contains(known, u) {
				return nil, false, fmt.Errorf("%s %q: unknown capability", flag, n)
			}
			out = append(out, u)
		}
		return out, all, nil
	}
	drop, dropAll, err := norm("--cap-drop", f.CapDrop)
	if err != nil {
		return err
	}
	add, addAll, err := norm("--cap-add", f.CapAdd)
	if err != nil {
		return err
	}
	sets := []*[]string{&caps.Bounding, &caps.Effective, &caps.Permitted}
	for _, set := range sets {
		if dropAll {
			*set = nil
		}
		*set = slices.DeleteFunc(*set, func(c string) bool { return slices.Contains(drop, c) })
		if addAll {
			*set = append([]string(nil), known...)
		}
		for _, c := range add {
			if !slices.Contains(*set, c) {
				*set = append(*set, c)
			}
		}
	}
	return nil
}
