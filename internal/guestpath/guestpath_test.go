package guestpath

import (
	"slices"
	"strings"
	"testing"
)

func TestPaths(t *testing.T) {
	for got, want := range map[string]string{
		SCSIMount(3):         "/run/mounts/scsi/m3",
		PmemMount(0):         "/run/mounts/pmem/m0",
		ShareMount(12):       "/run/mounts/share/s12",
		ContainerRoot("c1"):  "/run/c/c1",
		Rootfs("/run/c/c1"):  "/run/c/c1/rootfs",
		Bundle("c1"):         "/run/bundles/c1",
		RuntimeState + "/c1": "/run/oci/c1",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

// Every path the host asks the agent about lies under an allowed root, and
// no root is there for tests: the agent's own state and the rest of /run
// are out of reach.
func TestAllowedRoots(t *testing.T) {
	roots := AllowedRoots()
	under := func(p string) bool {
		return slices.ContainsFunc(roots, func(r string) bool { return p == r || strings.HasPrefix(p, r+"/") })
	}
	for _, p := range []string{SCSIMount(0), PmemMount(0), ShareMount(0), Rootfs(ContainerRoot("c")), SandboxMounts + "/cache"} {
		if !under(p) {
			t.Errorf("%s is outside the allowed roots %v", p, roots)
		}
	}
	for _, p := range []string{"/run/test/x", "/run/layers/x", Bundle("c"), RuntimeState, RuntimeBinary, "/run"} {
		if under(p) {
			t.Errorf("%s is allowed (roots %v)", p, roots)
		}
	}
	roots[0] = "/changed"
	if AllowedRoots()[0] == "/changed" {
		t.Error("AllowedRoots shares its slice")
	}
}
