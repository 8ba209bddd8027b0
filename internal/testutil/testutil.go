// Package testutil holds the checks tests share. A test that needs root or
// a tool fails in CI (where the set-up installs everything and runs as root)
// and skips elsewhere.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// unavailable fails in CI and skips outside it.
func unavailable(t testing.TB, why string) {
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
		unavailable(t, "needs root")
	}
}

// NeedTool returns the path of a command, stopping the test without it.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, name+" is not installed")
	}
	return p
}
