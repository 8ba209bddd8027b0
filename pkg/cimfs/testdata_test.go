package cimfs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// realDir is the directory of the cimfs.dll-written image, outside the repo.
func realDir(t testing.TB) string {
	t.Helper()
	dir := testutil.SharedTestdata(t, "windows", "cimfs")
	if _, err := os.Stat(filepath.Join(dir, "test.cim")); err != nil {
		t.Fatalf("real CIM test data missing: %v", err)
	}
	return dir
}

const realGUID = "2cf2ae9f-8556-4421-9f2f-d9ca60534d62"
