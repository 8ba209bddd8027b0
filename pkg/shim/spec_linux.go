package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
)

// guestDevice is a device node every guest kernel has with the same
// numbers as the host's.
type guestDevice struct {
	typ          string
	major, minor int64
}

// guestDevices are the device nodes a container in a utility VM may name
// in linux.devices: the guest's OCI runtime makes them from their numbers,
// which mean the same in the guest only for these.
var guestDevices = map[string]guestDevice{
	"/dev/null":    {"c", 1, 3},
	"/dev/zero":    {"c", 1, 5},
	"/dev/full":    {"c", 1, 7},
	"/dev/random":  {"c", 1, 8},
	"/dev/urandom": {"c", 1, 9},
	"/dev/tty":     {"c", 5, 0},
	"/dev/console": {"c", 5, 1},
	"/dev/ptmx":    {"c", 5, 2},
}

// Grouping annotations: containers whose spec carries one share a shim and
// a utility VM (a pod), as containerd's runc shim groups them.
const (
	AnnotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	AnnotationContainerType = "io.kubernetes.cri.container-type"
)

// groupLabels are the annotations that name a container's group, in the
// order containerd's runc shim reads them.
var groupLabels = []string{
	"io.containerd.runc.v2.group",
	AnnotationSandboxID,
}

// grouping is the id of the shim (and UVM) a container belongs to: its
// group's, else its own.
func grouping(id string, spec *specs.Spec) string {
	if spec != nil {
		for _, l := range groupLabels {
			if g := spec.Annotations[l]; g != "" {
				return g
			}
		}
	}
	return id
}

// bundleGrouping reads the grouping of the container whose bundle is dir.
func bundleGrouping(id, dir string) string {
	spec, err := readSpec(dir)
	if err != nil {
		return id
	}
	return grouping(id, spec)
}

// checkSpec refuses, before any VM is made, what a container in a utility
// VM cannot be given: device nodes the guest does not have, the host's
// network, and mounts of types the guest cannot set up. Namespace paths
// are translated once the VM runs (guestNamespaces).
func checkSpec(spec *specs.Spec) error {
	if spec.Process == nil {
		return fmt.Errorf("spec has no process: %w", errdefs.ErrInvalidArgument)
	}
	if l := spec.Linux; l != nil {
		for _, d := range l.Devices {
			want, ok := guestDevices[filepath.Clean(d.Path)]
			if !ok || d.Type != want.typ || d.Major != want.major || d.Minor != want.minor {
				return fmt.Errorf("linux.devices: %s (%s %d:%d): a container in a utility VM sees the guest's devices only, and the guest has no such device: %w",
					d.Path, d.Type, d.Major, d.Minor, errdefs.ErrInvalidArgument)
			}
		}
		hasNet := false
		for _, ns := range l.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				hasNet = true
			}
		}
		if !hasNet {
			return fmt.Errorf("host network (linux.namespaces has no network namespace): a container in a utility VM cannot use the host's network, and must not share the guest's: %w", errdefs.ErrInvalidArgument)
		}
	} else {
		return fmt.Errorf("spec has no linux section (namespaces): %w", errdefs.ErrInvalidArgument)
	}
	for i, m := range spec.Mounts {
		if runspec.RuntimeProvided(m) || strings.HasPrefix(m.Source, resources.SandboxPrefix) {
			continue
		}
		switch m.Type {
		case "", "bind":
			if !filepath.IsAbs(m.Source) {
				return fmt.Errorf("mount %d (%s): bind source %q is not an absolute host path: %w", i, m.Destination, m.Source, errdefs.ErrInvalidArgument)
			}
			if _, err := os.Stat(m.Source); err != nil {
				return fmt.Errorf("mount %d (%s): bind source: %w: %w", i, m.Destination, err, errdefs.ErrInvalidArgument)
			}
		case runspec.TypePhysicalDisk, runspec.TypeVirtualDisk:
		default:
			return fmt.Errorf("mount %d (%s -> %s): type %q is not supported in a utility VM (bind, %s, %s, or one the runtime provides: proc, sysfs, tmpfs, devpts, mqueue, cgroup): %w",
				i, m.Source, m.Destination, m.Type, runspec.TypePhysicalDisk, runspec.TypeVirtualDisk, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
