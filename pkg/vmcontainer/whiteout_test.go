package vmcontainer_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/whiteouttest"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/store"
)

// TestWhiteoutCasesInVM boots one VM and checks the whiteout table's image
// there: every case's tree listed inside the guest equals the spec's view
// and the host's, and neither root shows anything the image lacks (such
// as the layer images' lost+found).
func TestWhiteoutCasesInVM(t *testing.T) {
	e := newEnv(t, 16)
	ctx := context.Background()
	base, err := imagebuild.BusyboxBase()
	if err != nil {
		t.Fatal(err)
	}
	lowerL, upperL := whiteouttest.Layers()
	im := imagebuild.Image{Name: "wt:latest", Layers: []imagebuild.Layer{
		base,
		{Compression: imagebuild.Gzip, Entries: lowerL},
		{Compression: imagebuild.Zstd, Entries: upperL},
	}}
	arch := filepath.Join(t.TempDir(), "wt.tar")
	if err := im.Write(imagebuild.OCITar, arch); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Import(ctx, arch, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"wt-vm", "wt-host"} {
		if _, err := e.s.CreateContainer(ctx, name, "wt:latest", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	folders, err := e.s.LayerFolders("wt-vm")
	if err != nil {
		t.Fatal(err)
	}
	res, err := resources.Setup(ctx, e.vm, e.mnt, resources.Container{ID: "wt-vm", Spec: &specs.Spec{}, LayerFolders: folders, GuestRoot: guestpath.ContainerRoot("wt-vm")})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Release(ctx)
	hostRoot, err := e.s.Mount(ctx, "wt-host")
	if err != nil {
		t.Fatal(err)
	}
	defer e.s.RemoveContainer(ctx, "wt-host")

	out, code := e.sh(t, res.Rootfs, "ls -A /")
	if code != 0 {
		t.Fatalf("ls / in VM: %d %s", code, out)
	}
	vmRoot := strings.Fields(out)
	// The runtime makes its mount points (containerd's default /run tmpfs)
	// in a root that lacks them: not the image's content.
	defaults, err := runspec.Build(runspec.Flags{Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	madeByRuntime := map[string]bool{}
	for _, m := range defaults.Mounts {
		madeByRuntime[strings.SplitN(strings.TrimPrefix(m.Destination, "/"), "/", 2)[0]] = true
	}
	vmRoot = slices.DeleteFunc(vmRoot, func(n string) bool {
		return madeByRuntime[n] && !slices.Contains([]string{"dev", "proc", "sys", "tmp"}, n)
	})
	ents, err := os.ReadDir(hostRoot)
	if err != nil {
		t.Fatal(err)
	}
	var hostNames []string
	for _, d := range ents {
		hostNames = append(hostNames, d.Name())
	}
	want := []string{"bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", whiteouttest.Top}
	slices.Sort(want)
	slices.Sort(vmRoot)
	if !slices.Equal(vmRoot, want) || !slices.Equal(hostNames, want) {
		t.Errorf("container roots: VM %v, host %v, want the image's %v", vmRoot, hostNames, want)
	}

	out, code = e.sh(t, res.Rootfs, whiteouttest.ListScript("/"+whiteouttest.Top))
	if code != 0 {
		t.Fatalf("listing in VM: %d %s", code, out)
	}
	vmView, err := whiteouttest.ParseListing(out)
	if err != nil {
		t.Fatal(err)
	}
	hostView, err := whiteouttest.List(filepath.Join(hostRoot, whiteouttest.Top))
	if err != nil {
		t.Fatal(err)
	}
	if d := whiteouttest.Diff(vmView, hostView); d != "" {
		t.Errorf("VM and host views differ (got: VM, want: host):\n%s", d)
	}
	for _, c := range whiteouttest.Cases {
		if d := whiteouttest.Diff(whiteouttest.Sub(vmView, c.Name), c.Want()); d != "" {
			t.Errorf("%s: view in the VM differs from the spec:\n%s", c.Name, d)
		}
	}
}
