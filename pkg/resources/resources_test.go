package resources_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/fakeuvm"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
)

type env struct {
	f       *fakeuvm.UVM
	m       *layers.InUVM
	folders []string
	tmp     string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	os.MkdirAll(base, 0o755)
	os.WriteFile(filepath.Join(base, layers.LayerFile), make([]byte, 4096), 0o644)
	scr := filepath.Join(tmp, "scratch")
	os.MkdirAll(scr, 0o755)
	os.WriteFile(filepath.Join(scr, layers.ScratchFile), nil, 0o644)
	f := fakeuvm.New()
	return &env{f: f, m: layers.NewInUVM(f), folders: []string{base, scr}, tmp: tmp}
}

func (e *env) container(spec *specs.Spec) resources.Container {
	return resources.Container{ID: "c1", Spec: spec, LayerFolders: e.folders, GuestRoot: "/run/c/c1"}
}

func TestSetupMountsAndReleasesInReverse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	shared := filepath.Join(e.tmp, "data")
	os.MkdirAll(shared, 0o755)
	secret := filepath.Join(e.tmp, "etc")
	os.MkdirAll(secret, 0o755)
	os.WriteFile(filepath.Join(secret, "resolv.conf"), []byte("nameserver 1.1.1.1\n"), 0o644)
	os.WriteFile(filepath.Join(secret, "shadow"), []byte("secret\n"), 0o600)
	disk := filepath.Join(e.tmp, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Source: shared, Destination: "/data", Type: "bind", Options: []string{"RO"}},
		{Source: filepath.Join(secret, "resolv.conf"), Destination: "/etc/resolv.conf"},
		{Source: disk, Destination: "/disk", Type: "virtual-disk"},
		{Source: "sandbox://cache/a", Destination: "/cache"},
		{Source: "sandbox://cache/a", Destination: "/cache2"},
	}}
	res, err := resources.Setup(ctx, e.f, e.m, e.container(spec))
	if err != nil {
		t.Fatal(err)
	}
	if spec.Root == nil || spec.Root.Path != "/run/c/c1/rootfs" || res.Rootfs != spec.Root.Path {
		t.Fatalf("Root.Path not set to the rootfs: %+v", spec.Root)
	}
	if e.f.Refs["share:"+shared+":ro=true"] != 1 {
		t.Fatalf("directory not shared read-only (options compared case-insensitively): %v", e.f.Refs)
	}
	// A single file is shared by itself and bound at its destination.
	if e.f.Refs["share:"+filepath.Join(secret, "resolv.conf")+":ro=false"] != 1 {
		t.Fatalf("single file not shared: %v", e.f.Refs)
	}
	if src := e.f.Binds["/run/c/c1/rootfs/etc/resolv.conf"]; src != "/run/shares/resolv.conf" {
		t.Fatalf("single file bound from %q", src)
	}
	if src := e.f.Binds["/run/c/c1/rootfs/cache"]; src != "/run/sandbox-mounts/cache/a" {
		t.Fatalf("sandbox mount bound from %q", src)
	}
	if e.f.Binds["/run/c/c1/rootfs/cache2"] != e.f.Binds["/run/c/c1/rootfs/cache"] {
		t.Fatal("second sandbox:// of the same dir not allowed")
	}
	if err := res.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if e.f.Total() != 0 {
		t.Fatalf("leaked: refs %v binds %v combined %v", e.f.Refs, e.f.Binds, e.f.Combined)
	}
}

func TestSetupRootPathGiven(t *testing.T) {
	e := newEnv(t)
	spec := &specs.Spec{Root: &specs.Root{Path: "/already/there"}}
	res, err := resources.Setup(context.Background(), e.f, e.m, e.container(spec))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.f.Combined) != 0 || res.Rootfs != "/already/there" {
		t.Fatal("layers mounted although Root.Path was set")
	}
}

func TestSetupCreatesMissingScratch(t *testing.T) {
	e := newEnv(t)
	newScratch := filepath.Join(e.tmp, "new-scratch")
	c := e.container(&specs.Spec{})
	c.LayerFolders = []string{e.folders[0], newScratch}
	c.TemplateRoot = filepath.Join(e.tmp, "tpl")
	c.ScratchSize = 32 << 20
	res, err := resources.Setup(context.Background(), e.f, e.m, c)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(newScratch, layers.ScratchFile))
	if err != nil || st.Size() != 32<<20 {
		t.Fatalf("scratch not created from template: %v", err)
	}
	res.Release(context.Background())
}

func TestSetupBadSpecs(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		folders []string
		mounts  []specs.Mount
		want    string
	}{
		{"no layer folders", []string{}, nil, "field 'Spec.Windows.LayerFolders' is not populated"},
		{"one folder", []string{"/x"}, nil, "need at least two layers - base and scratch"},
		{"no source", nil, []specs.Mount{{Destination: "/d"}}, "needs both source"},
		{"no destination", nil, []specs.Mount{{Source: "/tmp"}}, "needs both source"},
		{"unknown type", nil, []specs.Mount{{Source: "/tmp", Destination: "/d", Type: "nfs"}}, "invalid OCI spec - Type 'nfs' not supported"},
		{"evd", nil, []specs.Mount{{Source: "/tmp/x.vhdx", Destination: "/d", Type: "extensible-virtual-disk"}}, "not supported on Linux"},
		{"sandbox dotdot", nil, []specs.Mount{{Source: "sandbox://../../etc", Destination: "/d"}}, "escapes the sandbox root"},
		{"sandbox absolute", nil, []specs.Mount{{Source: "sandbox:///etc", Destination: "/d"}}, "must be a relative path"},
		{"dest dotdot", nil, []specs.Mount{{Source: "/tmp", Destination: "/../../x"}}, "contains \"..\""},
		{"missing source", nil, []specs.Mount{{Source: "/nonexistent-dir", Destination: "/d"}}, "/nonexistent-dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.container(&specs.Spec{Mounts: tc.mounts})
			if tc.folders != nil {
				c.LayerFolders = tc.folders
				if len(tc.folders) == 0 {
					c.LayerFolders = nil
				}
			}
			// A good mount first, so failure must roll it back.
			c.Spec.Mounts = append([]specs.Mount{{Source: "sandbox://ok", Destination: "/ok"}}, c.Spec.Mounts...)
			_, err := resources.Setup(ctx, e.f, e.m, c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
			if e.f.Total() != 0 {
				t.Fatalf("leaked after bad spec: %v %v %v", e.f.Refs, e.f.Binds, e.f.Combined)
			}
		})
	}
}

func TestReleaseRetriesOnlyFailures(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dir := filepath.Join(e.tmp, "d")
	os.MkdirAll(dir, 0o755)
	res, err := resources.Setup(ctx, e.f, e.m, e.container(&specs.Spec{Mounts: []specs.Mount{{Source: dir, Destination: "/d"}}}))
	if err != nil {
		t.Fatal(err)
	}
	e.f.FailRelease = ":ro=false"
	if err := res.Release(ctx); err == nil {
		t.Fatal("injected failure not reported")
	}
	if e.f.Total() != 1 {
		t.Fatalf("release stopped at the first error: %v %v", e.f.Refs, e.f.Binds)
	}
	e.f.FailRelease = ""
	if err := res.Release(ctx); err != nil || e.f.Total() != 0 {
		t.Fatalf("retry: %v %v", err, e.f.Refs)
	}
}

// Setup says whether the container can write somewhere that outlives the
// UVM (a writable share or disk), so that a VM run skips the guest's clean
// shutdown only when nothing it may write does.
func TestSetupWritesOutside(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "d.vhdx"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
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
		res, err := resources.Setup(context.Background(), e.f, e.m, e.container(spec))
		if err != nil {
			t.Fatalf("volumes %v mounts %v: %v", c.volumes, c.mounts, err)
		}
		if res.WritesOutside != c.want {
			t.Errorf("volumes %v mounts %v: WritesOutside %v, want %v", c.volumes, c.mounts, res.WritesOutside, c.want)
		}
		if err := res.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// sharesMeetingOnRelease is a fake UVM whose shares' Release waits until
// every one of them is being released: released one after another, the
// first would wait for ever (here: until the deadline).
type sharesMeetingOnRelease struct {
	*fakeuvm.UVM
	t       *testing.T
	n       int
	arrived chan struct{}
	all     chan struct{}
}

type meetingShare struct {
	layers.Attachment
	u      *sharesMeetingOnRelease
	target string
}

func (u *sharesMeetingOnRelease) AddShare(ctx context.Context, hostDir string, ro bool) (layers.Attachment, error) {
	a, err := u.UVM.AddShare(ctx, hostDir, ro)
	if err != nil {
		return nil, err
	}
	return &meetingShare{Attachment: a, u: u, target: "/run/c/c1/rootfs/" + filepath.Base(hostDir)}, nil
}

func (a *meetingShare) Release(ctx context.Context) error {
	if src, bound := a.u.BindSource(a.target); bound {
		a.u.t.Errorf("share released while %s still binds it (from %s)", a.target, src)
	}
	a.u.arrived <- struct{}{}
	select {
	case <-a.u.all:
	case <-time.After(10 * time.Second):
		a.u.t.Error("shares released one after another, not alongside each other")
	}
	return a.Attachment.Release(ctx)
}

func TestReleaseSharesAlongside(t *testing.T) {
	e := newEnv(t)
	u := &sharesMeetingOnRelease{UVM: e.f, t: t, n: 3, arrived: make(chan struct{}, 3), all: make(chan struct{})}
	go func() {
		for i := 0; i < u.n; i++ {
			<-u.arrived
		}
		close(u.all)
	}()
	var mounts []specs.Mount
	for _, d := range []string{"a", "b", "c"} {
		dir := filepath.Join(e.tmp, d)
		os.MkdirAll(dir, 0o755)
		mounts = append(mounts, specs.Mount{Source: dir, Destination: "/" + d})
	}
	ctx := context.Background()
	res, err := resources.Setup(ctx, u, layers.NewInUVM(u), e.container(&specs.Spec{Mounts: mounts}))
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if e.f.Total() != 0 {
		t.Fatalf("leaked: refs %v binds %v", e.f.Refs, e.f.Binds)
	}
}
