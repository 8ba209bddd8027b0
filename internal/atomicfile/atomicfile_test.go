package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Create(p, 0o640, func(f *os.File) error { _, err := f.WriteString("content"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "content" {
		t.Fatalf("content %q", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", st.Mode())
	}
	if err := Create(p, 0o600, func(*os.File) error { return nil }); !errors.Is(err, os.ErrExist) {
		t.Errorf("create over an existing file: %v", err)
	}
	boom := errors.New("boom")
	if err := Create(filepath.Join(dir, "g"), 0o600, func(f *os.File) error { f.WriteString("half"); return boom }); !errors.Is(err, boom) {
		t.Errorf("failed fill: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("a failed create left files behind: %v", ents)
	}
}

// recorder collects the steps under one directory (tests run in parallel
// with other watchers).
type recorder struct {
	mu  sync.Mutex
	ops []Op
}

func record(t *testing.T, under string) *recorder {
	r := &recorder{}
	stop := Watch(func(op Op) {
		if strings.HasPrefix(op.Path, under) {
			r.mu.Lock()
			r.ops = append(r.ops, op)
			r.mu.Unlock()
		}
	})
	t.Cleanup(stop)
	return r
}

// index returns the position of the first step of kind on path, or -1.
func (r *recorder) index(kind OpKind, path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, op := range r.ops {
		if op.Kind == kind && op.Path == path {
			return i
		}
	}
	return -1
}

// inOrder fails unless each step happened, in the order given.
func (r *recorder) inOrder(t *testing.T, steps ...Op) {
	t.Helper()
	last := -1
	for _, s := range steps {
		i := r.index(s.Kind, s.Path)
		if i < 0 {
			t.Errorf("no %s of %s in %v", s.Kind, s.Path, r.ops)
			continue
		}
		if i <= last {
			t.Errorf("%s of %s comes before the step preceding it: %v", s.Kind, s.Path, r.ops)
		}
		last = i
	}
}

func TestPublishDir(t *testing.T) {
	root := t.TempDir()
	tmp, final := filepath.Join(root, "tmp", "x-123"), filepath.Join(root, "containers", "x")
	for _, d := range []string{filepath.Join(tmp, "sub"), filepath.Dir(final)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a", "sub/b"} {
		if err := os.WriteFile(filepath.Join(tmp, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	r := record(t, root)
	if err := Publish(tmp, final); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(final, "sub", "b")); err != nil || string(b) != "sub/b" {
		t.Fatalf("published content: %q %v", b, err)
	}
	// Data first (files, then their directories, deepest first), then the
	// rename, then the directories whose entries the rename changed.
	r.inOrder(t, Op{Kind: OpSyncFile, Path: filepath.Join(tmp, "sub", "b")},
		Op{Kind: OpSyncDir, Path: filepath.Join(tmp, "sub")}, Op{Kind: OpSyncDir, Path: tmp},
		Op{Kind: OpRename, Path: tmp}, Op{Kind: OpSyncDir, Path: filepath.Dir(final)}, Op{Kind: OpSyncDir, Path: filepath.Dir(tmp)})
	r.inOrder(t, Op{Kind: OpSyncFile, Path: filepath.Join(tmp, "a")}, Op{Kind: OpSyncDir, Path: tmp})
	if i := r.index(OpSyncFile, filepath.Join(tmp, "link")); i >= 0 {
		t.Errorf("a symbolic link was opened and flushed (its target, not the link)")
	}

	// Publishing over a non-empty directory fails, naming it; both stay.
	if err := os.MkdirAll(filepath.Join(root, "tmp", "y", "z"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := Publish(filepath.Join(root, "tmp", "y"), final)
	if err == nil || !strings.Contains(err.Error(), final) {
		t.Errorf("publish over a full directory: %v", err)
	}
	if err := Publish(filepath.Join(root, "missing"), filepath.Join(root, "m")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("publish of a missing path: %v", err)
	}
}

func TestPublishFileAndWrite(t *testing.T) {
	dir := t.TempDir()
	r := record(t, dir)
	tmp := filepath.Join(dir, ".tmp-f")
	if err := os.WriteFile(tmp, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Publish(tmp, filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	r.inOrder(t, Op{Kind: OpSyncFile, Path: tmp}, Op{Kind: OpRename, Path: tmp}, Op{Kind: OpSyncDir, Path: dir})

	// Write with sync and Create flush through the same steps.
	if err := Write(filepath.Join(dir, "w"), []byte("w"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if err := Create(filepath.Join(dir, "c"), 0o600, func(f *os.File) error { _, err := f.WriteString("c"); return err }); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var kinds []string
	for _, op := range r.ops[3:] {
		kinds = append(kinds, string(op.Kind))
	}
	if got, want := strings.Join(kinds, " "), "sync-file rename sync-dir sync-file link sync-dir"; got != want {
		t.Errorf("Write and Create steps: %s, want %s", got, want)
	}
}

func TestTempLockedUntilPublished(t *testing.T) {
	dir := t.TempDir()
	live, err := CreateTemp(dir, ".tmp-live-*")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Discard()
	if _, err := live.WriteString("half"); err != nil {
		t.Fatal(err)
	}
	// A writer that died: its descriptor (and so its lock) is gone, its
	// file is not. flock locks belong to the open file, so closing it is
	// what the kernel does to a killed process's files.
	dead, err := CreateTemp(dir, ".tmp-dead-*")
	if err != nil {
		t.Fatal(err)
	}
	dead.File.Close()
	// A plain file without the prefix is not ours.
	other := filepath.Join(dir, "keep")
	os.WriteFile(other, nil, 0o644)

	removed, err := RemoveStale(dir, ".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != dead.Name() {
		t.Errorf("removed %v, want only %s", removed, dead.Name())
	}
	for _, p := range []string{live.Name(), other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}

	r := record(t, dir)
	final := filepath.Join(dir, "out")
	if err := live.Publish(final); err != nil {
		t.Fatal(err)
	}
	r.inOrder(t, Op{Kind: OpSyncFile, Path: live.Name()}, Op{Kind: OpRename, Path: live.Name()}, Op{Kind: OpSyncDir, Path: dir})
	if b, _ := os.ReadFile(final); string(b) != "half" {
		t.Errorf("published %q", b)
	}
	if err := live.Publish(final); err == nil {
		t.Error("second publish accepted")
	}

	gone, err := CreateTemp(dir, ".tmp-gone-*")
	if err != nil {
		t.Fatal(err)
	}
	gone.Discard()
	if _, err := os.Stat(gone.Name()); !os.IsNotExist(err) {
		t.Errorf("discarded temp file still there: %v", err)
	}
	if removed, err := RemoveStale(filepath.Join(dir, "missing"), ".tmp-"); err != nil || removed != nil {
		t.Errorf("missing dir: %v %v", removed, err)
	}
}

// helperEnv makes the test binary a process that creates a temp file in
// the named directory, says its name and waits to be killed.
const helperEnv = "ATOMICFILE_TEST_HELPER_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		f, err := CreateTemp(dir, ".tmp-helper-*")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(f.Name())
		io.Copy(io.Discard, os.Stdin) // until killed
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A writer killed with SIGKILL leaves its temp file unlocked: RemoveStale
// keeps it while the writer lives and removes it once it is dead.
func TestTempOfKilledWriter(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %v", err)
	}
	name = strings.TrimSpace(name)
	if removed, err := RemoveStale(dir, ".tmp-"); err != nil || len(removed) != 0 {
		t.Errorf("removed the file of a live writer: %v %v", removed, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if removed, err := RemoveStale(dir, ".tmp-"); err != nil || len(removed) != 1 || removed[0] != name {
		t.Errorf("after the kill: removed %v (%v), want %s", removed, err, name)
	}
}
