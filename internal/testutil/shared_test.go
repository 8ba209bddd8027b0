package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stopTB records how a helper stopped a test instead of stopping this one.
type stopTB struct {
	testing.TB
	skipped, failed string
}

func (s *stopTB) Helper()                   {}
func (s *stopTB) Skip(args ...any)          { s.skipped = fmt.Sprint(args...) }
func (s *stopTB) Skipf(f string, a ...any)  { s.skipped = fmt.Sprintf(f, a...) }
func (s *stopTB) Fatalf(f string, a ...any) { s.failed = fmt.Sprintf(f, a...) }

func TestSharedTestdata(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "main")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(base, "shared", "testdata", "windows", "cimfs")

	// A clone alone: one line naming the missing directory, a skip.
	t.Setenv(RequireSharedEnv, "")
	s := &stopTB{TB: t}
	if p := sharedTestdata(s, root, "windows", "cimfs"); p != "" || s.failed != "" ||
		!strings.Contains(s.skipped, want) || strings.Contains(s.skipped, "\n") {
		t.Errorf("without the data: path %q, skipped %q, failed %q", p, s.skipped, s.failed)
	}
	// Required: the same line fails the test.
	t.Setenv(RequireSharedEnv, "1")
	s = &stopTB{TB: t}
	if p := sharedTestdata(s, root, "windows", "cimfs"); p != "" || s.skipped != "" || !strings.Contains(s.failed, want) {
		t.Errorf("required: path %q, skipped %q, failed %q", p, s.skipped, s.failed)
	}
	// Present: its path, whatever the variable says.
	if err := os.MkdirAll(want, 0o755); err != nil {
		t.Fatal(err)
	}
	s = &stopTB{TB: t}
	if p := sharedTestdata(s, root, "windows", "cimfs"); p != want || s.skipped != "" || s.failed != "" {
		t.Errorf("present: path %q, skipped %q, failed %q", p, s.skipped, s.failed)
	}

	// This checkout's root is found from a package directory.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := checkout(); err != nil || got != filepath.Dir(filepath.Dir(wd)) {
		t.Errorf("checkout() = %q, %v; want the directory two above %s", got, err, wd)
	}
}
