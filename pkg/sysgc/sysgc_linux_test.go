package sysgc

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/store"
)

// A run killed while its container was mounted: the store's step keeps
// the complete mount (it runs before the runs' step), then the dead run's
// container goes, unmounted, with its claim.
func TestRunReapsDeadRunAfterTheStore(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "mkfs.ext4")
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(t.TempDir(), "img.tar")
	if err := (imagebuild.Image{Name: "x:1", Layers: []imagebuild.Layer{{Entries: []imagebuild.Entry{imagebuild.File("a", "a", 0o644)}}}}).Write(imagebuild.OCITar, tar); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, tar, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateContainer(ctx, "run-x", "x:1", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mount(ctx, "run-x"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.RemoveContainer(context.WithoutCancel(ctx), "run-x") })
	// The claim a SIGKILLed run leaves: its lock file, locked by nobody.
	claim := filepath.Join(s.Root(), "runs", "run-x.lock")
	os.MkdirAll(filepath.Dir(claim), 0o755)
	if err := os.WriteFile(claim, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	rep, err := Run(ctx, s, Options{OCIRuntime: "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Store.Mounts.Kept, []string{"run-x"}) || !slices.Equal(rep.DeadRuns, []string{"run-x"}) {
		t.Fatalf("report %+v: want run-x kept mounted by the store's step, then reaped as a dead run's", rep)
	}
	if cs, err := s.Containers(); err != nil || len(cs) != 0 {
		t.Fatalf("containers after gc: %+v, %v", cs, err)
	}
	if _, err := os.Stat(claim); !os.IsNotExist(err) {
		t.Fatalf("the dead run's claim is left (%v)", err)
	}
}
