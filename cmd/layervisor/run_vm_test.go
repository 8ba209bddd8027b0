package main

import (
	"testing"

	"github.com/layervisor/layervisor/pkg/runspec"
)

// A VM run skips the guest's clean shutdown only when nothing it may write
// outlives the UVM.
func TestWritesOutside(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		volumes, mounts []string
		want            bool
	}{
		{nil, nil, false},
		{[]string{dir + ":/data:ro"}, nil, false},
		{[]string{dir + ":/data"}, nil, true},
		{nil, []string{"type=sandbox,source=sandbox:///cache,target=/cache"}, false},
		{nil, []string{"type=virtual-disk,source=" + dir + "/d.vhdx,target=/d,readonly"}, false},
		{nil, []string{"type=virtual-disk,source=" + dir + "/d.vhdx,target=/d"}, true},
	} {
		spec, err := runspec.Build(runspec.Flags{Args: []string{"true"}, Volumes: c.volumes, Mounts: c.mounts})
		if err != nil {
			t.Fatal(err)
		}
		if got := writesOutside(spec); got != c.want {
			t.Errorf("volumes %v mounts %v: writesOutside %v, want %v", c.volumes, c.mounts, got, c.want)
		}
	}
}
