package shim

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func testSpec() *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: []string{"true"}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}},
			Devices:    []specs.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3}},
		},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
	}
}

// TestCheckSpec: what the guest cannot honour is refused as an invalid
// argument naming it; host namespace paths are dropped.
func TestCheckSpec(t *testing.T) {
	if err := checkSpec(testSpec()); err != nil {
		t.Fatalf("a plain spec: %v", err)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		edit func(*specs.Spec)
		want string // "" = accepted
	}{
		{"no process", func(s *specs.Spec) { s.Process = nil }, "no process"},
		{"no linux", func(s *specs.Spec) { s.Linux = nil }, "no linux section"},
		{"host device", func(s *specs.Spec) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229})
		}, "/dev/fuse (c 10:229)"},
		{"known path, other numbers", func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 10, Minor: 229}}
		}, "/dev/null (c 10:229)"},
		{"host network", func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[:1] }, "host network"},
		{"nfs", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Type: "nfs", Source: "h:/x", Destination: "/mnt"})
		}, `type "nfs"`},
		{"relative bind", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Type: "bind", Source: "rel", Destination: "/mnt"})
		}, "not an absolute host path"},
		{"missing bind source", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Type: "bind", Source: dir + "/missing", Destination: "/mnt"})
		}, "bind source"},
		{"bind", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Type: "bind", Source: dir, Destination: "/mnt", Options: []string{"rbind", "ro"}})
		}, ""},
		{"sandbox mount", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Type: "bind", Source: "sandbox://x", Destination: "/mnt"})
		}, ""},
	} {
		s := testSpec()
		c.edit(s)
		err := checkSpec(s)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, errdefs.ErrInvalidArgument)):
			t.Errorf("%s: got %v, want an invalid argument naming %q", c.name, err, c.want)
		}
	}
	s := testSpec()
	s.Linux.Namespaces[1].Path = "/var/run/netns/cni-1"
	if err := checkSpec(s); err != nil || s.Linux.Namespaces[1].Path != "/var/run/netns/cni-1" {
		t.Errorf("a host network namespace path: %v, path %q (want it kept for guestNamespaces)", err, s.Linux.Namespaces[1].Path)
	}
}

func TestProcNamespace(t *testing.T) {
	for _, c := range []struct {
		path string
		pid  uint32
		file string
		ok   bool
	}{
		{"/proc/42/ns/ipc", 42, "ipc", true},
		{"/proc/42/ns/../ns/uts", 42, "uts", true},
		{"/var/run/netns/cni-1", 0, "", false},
		{"/proc/self/ns/net", 0, "", false},
		{"/proc/42/ns/net/x", 0, "", false},
		{"/proc/99999999999/ns/net", 0, "", false},
	} {
		pid, file, ok := procNamespace(c.path)
		if pid != c.pid || file != c.file || ok != c.ok {
			t.Errorf("%s: got %d %q %v", c.path, pid, file, ok)
		}
	}
}

func TestGrouping(t *testing.T) {
	s := testSpec()
	if g := grouping("c1", s); g != "c1" {
		t.Errorf("no annotation: %q", g)
	}
	s.Annotations = map[string]string{AnnotationSandboxID: "pod1"}
	if g := grouping("c1", s); g != "pod1" {
		t.Errorf("sandbox id: %q", g)
	}
	s.Annotations["io.containerd.runc.v2.group"] = "g"
	if g := grouping("c1", s); g != "g" {
		t.Errorf("group label first, as runc: %q", g)
	}
}
