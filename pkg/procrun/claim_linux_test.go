package procrun

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/store"
)

// claimEnv makes the test binary a run that creates a container and holds
// its claim until killed (or its stdin closes): "ROOT NAME IMAGE".
const claimEnv = "PROCRUN_TEST_HOLD"

func TestMain(m *testing.M) {
	if args := os.Getenv(claimEnv); args != "" {
		os.Exit(holdRun(strings.Fields(args)))
	}
	os.Exit(testutil.Main(m))
}

func holdRun(args []string) int {
	s, err := store.Open(args[0])
	if err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	ctx := context.Background()
	c, err := Create(ctx, s, args[1], args[2], store.ContainerOptions{ScratchSize: 64 << 20})
	if err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	os.Stdout.WriteString("claimed\n")
	bufio.NewReader(os.Stdin).ReadString('\n')
	if err := c.End(ctx, false); err != nil {
		return 1
	}
	return 0
}

// newStore opens a store under a temp dir with the image "x:1" imported.
func newStore(t *testing.T) *store.Store {
	t.Helper()
	testutil.NeedTool(t, "mkfs.ext4")
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(t.TempDir(), "img.tar")
	im := imagebuild.Image{Name: "x:1", Layers: []imagebuild.Layer{
		{Entries: []imagebuild.Entry{imagebuild.File("a", "a", 0o644)}},
	}}
	if err := im.Write(imagebuild.OCITar, tar); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(context.Background(), tar, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	return s
}

// startRun starts a process that creates the container name and holds
// its run's claim; it returns once the claim is held.
func startRun(t *testing.T, s *store.Store, name string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), claimEnv+"="+s.Root()+" "+name+" x:1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "claimed\n" {
		t.Fatalf("run %s did not claim its container (said %q)", name, line)
	}
	return cmd
}

// kill SIGKILLs a run: no teardown, the kernel drops its claim.
func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Kill()
	cmd.Wait()
}

func containerNames(t *testing.T, s *store.Store) []string {
	t.Helper()
	cs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	return names
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// A claim held by a live run keeps its container; one whose run died
// (SIGKILL) is reaped with what the run left outside the store.
func TestReapDeadReapsDeadRunsAndKeepsLiveOnes(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	live := startRun(t, s, "live")
	dead := startRun(t, s, "dead")
	// What a process-isolated run leaves beside its container: its bundle
	// and the runtime's record (a runtime that cannot delete it: the
	// record is removed anyway).
	root := s.Root()
	state := filepath.Join(hostRuntime(root, "").StateDir, "dead")
	for _, d := range []string{bundlePath(root, "dead"), state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kill(t, dead)

	reaped, err := ReapDead(ctx, s, "/bin/false")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(reaped, []string{"dead"}) {
		t.Fatalf("reaped %v, want [dead]", reaped)
	}
	if got := containerNames(t, s); !slices.Equal(got, []string{"live"}) {
		t.Fatalf("containers after the reap: %v, want [live]", got)
	}
	for _, p := range []string{claimPath(root, "dead"), bundlePath(root, "dead"), state} {
		if exists(p) {
			t.Errorf("%s is left after the reap", p)
		}
	}
	if !exists(claimPath(root, "live")) {
		t.Fatal("the live run's claim was removed")
	}

	// Once the live run dies too, it is reaped.
	kill(t, live)
	if reaped, err := ReapDead(ctx, s, "/bin/false"); err != nil || !slices.Equal(reaped, []string{"live"}) {
		t.Fatalf("reaped %v, %v; want [live]", reaped, err)
	}
	if got := containerNames(t, s); len(got) != 0 {
		t.Fatalf("containers after the second reap: %v", got)
	}
}

// A run that ends normally leaves nothing to reap: End removes its
// container and its claim.
func TestEndRemovesContainerAndClaim(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	c, err := Create(ctx, s, "run-a", "x:1", store.ContainerOptions{ScratchSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// While the run holds its claim, it is not reaped.
	if reaped, err := ReapDead(ctx, s, "/bin/false"); err != nil || len(reaped) != 0 {
		t.Fatalf("reaped %v, %v while the run lives", reaped, err)
	}
	if err := c.End(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := containerNames(t, s); len(got) != 0 {
		t.Fatalf("containers after End: %v", got)
	}
	if exists(claimPath(s.Root(), "run-a")) {
		t.Fatal("End left the claim")
	}

	// With keep, the container stays, an ordinary one: nothing reaps it.
	c, err = Create(ctx, s, "run-b", "x:1", store.ContainerOptions{ScratchSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	if reaped, err := ReapDead(ctx, s, "/bin/false"); err != nil || len(reaped) != 0 {
		t.Fatalf("reaped %v, %v: a kept container", reaped, err)
	}
	if got := containerNames(t, s); !slices.Equal(got, []string{"run-b"}) {
		t.Fatalf("containers after End with keep: %v", got)
	}
}

// A run that fails to create its container drops its claim; a dead run's
// claim without a container (it died before creating it) is removed
// without a report.
func TestClaimWithoutContainer(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := Create(ctx, s, "run-c", "no-such:image", store.ContainerOptions{}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Create of a missing image: %v, want ErrNotFound", err)
	}
	l, ok, err := flock.TryAcquire(claimPath(s.Root(), "run-c"))
	if err != nil || !ok {
		t.Fatalf("the failed run's claim is still held (%v)", err)
	}
	l.Release() // leaves the lock file, as a run killed before creating

	reaped, err := ReapDead(ctx, s, "/bin/false")
	if err != nil || len(reaped) != 0 {
		t.Fatalf("reaped %v, %v; want nothing", reaped, err)
	}
	if exists(claimPath(s.Root(), "run-c")) {
		t.Fatal("the dead run's claim is left")
	}
}
