// Package testutil holds the checks tests share. A test that needs root or
// a tool fails in CI (where the set-up installs everything and runs as root)
// and skips elsewhere.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Unavailable stops a test that lacks something the set-up provides: it
// fails in CI and skips outside it.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI must provide it: run scripts/test.sh as root)", why)
	}
	t.Skip(why)
}

// NeedRoot stops a test that needs root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
}

// NeedTool returns the path of a command, stopping the test without it.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, name+" is not installed")
	}
	return p
}

// Run runs a command (found with NeedTool) and returns its standard
// output, failing the test with its standard error when it exits non-zero.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(NeedTool(t, name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

var shared struct {
	sync.Mutex
	dirs []string
}

// SharedDir makes a directory for what all tests of a test binary share
// (a built binary, an initramfs, a template); Main removes it at the end.
func SharedDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	shared.Lock()
	shared.dirs = append(shared.dirs, dir)
	shared.Unlock()
	return dir, nil
}

// Main runs the tests, removes the SharedDir directories and returns the
// exit code: a package's TestMain is os.Exit(testutil.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	shared.Lock()
	defer shared.Unlock()
	for _, d := range shared.dirs {
		os.RemoveAll(d)
	}
	shared.dirs = nil
	return code
}
