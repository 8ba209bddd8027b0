package overlay

import (
	"fmt"
	"strings"
	"testing"
)

func TestForContainer(t *testing.T) {
	m := ForContainer("c1", []string{"/m/l1", "/m/l0"}, "content", "/m/s")
	opts, err := m.Options()
	if err != nil {
		t.Fatal(err)
	}
	want := "lowerdir=/m/l1/content:/m/l0/content,upperdir=/m/s/scratch/c1/upper,workdir=/m/s/scratch/c1/work"
	if opts != want {
		t.Fatalf("options\n got %s\nwant %s", opts, want)
	}
}

func TestOptionsRefused(t *testing.T) {
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("/run/mounts/scsi/m%d", i)
	}
	for _, tc := range []struct {
		m   Mount
		err string
	}{
		{ForContainer("c", many, "content", "/s"), "too long"},
		{Mount{Upper: "/u", Work: "/w"}, "at least one lower"},
		{Mount{Lowers: []string{"/l"}}, "upper and a work"},
		{Mount{Lowers: []string{"rel"}, Upper: "/u", Work: "/w"}, "not absolute"},
		{Mount{Lowers: []string{"/a:b"}, Upper: "/u", Work: "/w"}, "contains"},
		{Mount{Lowers: []string{"/a"}, Upper: "/u,x=y", Work: "/w"}, "contains"},
	} {
		if _, err := tc.m.Options(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Options(%+v) = %v, want %q", tc.m, err, tc.err)
		}
	}
}
