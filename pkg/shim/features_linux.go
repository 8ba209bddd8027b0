package shim

import (
	"strconv"

	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/layervisor/layervisor/pkg/runspec"
)

func init() {
	// containerd reads features under this type URL (its core/runtime
	// registers the same, when linked in).
	if _, err := typeurl.TypeURL(&features.Features{}); err != nil {
		typeurl.Register(&features.Features{}, "types.containerd.io", "opencontainers/runtime-spec", strconv.Itoa(specs.VersionMajor), "features", "Features")
	}
}

// guestFeatures is what a container in a utility VM can be given, in the
// OCI runtime's features format (`runc features`), which containerd 2.x
// asks a shim for (-info) to learn what a runtime handler supports.
// Mount options are the bind options the host honours. Read-only is
// enforced by the host's share for everything under it, so it is
// recursive, but "rro" is not claimed: the share's read-only view is a
// mount in the host's namespace, which keeps the host from removing the
// source's submount points while the pod runs (critest's rro spec does
// that, and runc allows it). No user namespaces, no host namespaces (the
// guest has its own).
func guestFeatures() *features.Features {
	return &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: runspec.SpecVersion,
		MountOptions: []string{
			"bind", "rbind", "ro", "rw",
			"nosuid", "suid", "nodev", "dev", "noexec", "exec",
			"private", "rprivate", "slave", "rslave",
		},
		Linux: &features.Linux{
			Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "uts"},
			Cgroup:     &features.Cgroup{V2: ptr(true), Systemd: ptr(false)},
			Seccomp:    &features.Seccomp{Enabled: ptr(true)},
		},
	}
}

func ptr[T any](v T) *T { return &v }
