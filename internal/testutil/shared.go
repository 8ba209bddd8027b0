package testutil

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RequireSharedEnv set to 1 makes missing shared test data a failure
// instead of a skip (.ci/run sets it).
const RequireSharedEnv = "LAYERVISOR_REQUIRE_SHARED_TESTDATA"

const module = "github.com/layervisor/layervisor"

// SharedTestdata returns ../shared/testdata/<elem...> beside the checkout:
// files made by Windows that the repository does not carry. On a clone of
// the repository alone it is missing, and the test skips with one line
// naming it; with LAYERVISOR_REQUIRE_SHARED_TESTDATA=1 the test fails.
func SharedTestdata(t testing.TB, elem ...string) string {
	t.Helper()
	root, err := checkout()
	if err != nil {
		t.Fatalf("shared test data: %v", err)
		return ""
	}
	return sharedTestdata(t, root, elem...)
}

func sharedTestdata(t testing.TB, root string, elem ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{filepath.Dir(root), "shared", "testdata"}, elem...)...)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := "shared test data " + p + " is missing (it lives beside the checkout, not in it)"
	if os.Getenv(RequireSharedEnv) == "1" {
		t.Fatalf("%s and %s=1 requires it", msg, RequireSharedEnv)
		return ""
	}
	t.Skip(msg)
	return ""
}

// checkout finds the repository's root: the nearest directory above the
// working directory (a test's package) whose go.mod is this module's.
func checkout() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(dir) {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			wd, _ := os.Getwd()
			return "", &os.PathError{Op: "find the go.mod of " + module + " above", Path: wd, Err: os.ErrNotExist}
		}
		dir = up
	}
}

func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`) == module
		}
	}
	return false
}
