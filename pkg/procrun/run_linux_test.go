package procrun

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/pkg/runspec"
)

// The mounts only a utility VM provides are refused; binds become ones the
// runtime takes.
func TestCheckMounts(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		m       specs.Mount
		wantErr string
		want    []string // the options after the check
	}{
		{specs.Mount{Source: dir, Destination: "/d"}, "", []string{"rbind"}},
		{specs.Mount{Type: runspec.TypeBind, Source: dir, Destination: "/d", Options: []string{"bind", "ro"}}, "", []string{"bind", "ro"}},
		{specs.Mount{Source: filepath.Join(dir, "missing"), Destination: "/d"}, "bind source", nil},
		{specs.Mount{Source: runspec.SandboxPrefix + "x", Destination: "/d"}, "--isolation vm", nil},
		{specs.Mount{Type: runspec.TypeVirtualDisk, Source: "/d.vhdx", Destination: "/d"}, "needs --isolation vm", nil},
		{specs.Mount{Type: runspec.TypePhysicalDisk, Source: "/dev/sdz", Destination: "/d"}, "needs --isolation vm", nil},
		{specs.Mount{Type: "nfs", Source: "h:/x", Destination: "/d"}, "not supported", nil},
	} {
		spec := &specs.Spec{Mounts: []specs.Mount{c.m}}
		err := checkMounts(spec)
		switch {
		case c.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%+v: %v, want an error with %q", c.m, err, c.wantErr)
			}
		case err != nil:
			t.Errorf("%+v: %v", c.m, err)
		case spec.Mounts[0].Type != runspec.TypeBind || !slices.Equal(spec.Mounts[0].Options, c.want):
			t.Errorf("%+v: became %+v, want a bind with %v", c.m, spec.Mounts[0], c.want)
		}
	}
}
