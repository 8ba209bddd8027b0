package regtext

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/regf"
)

func TestApplyFile(t *testing.T) {
	dir := t.TempDir()
	h, good, bad := filepath.Join(dir, "h"), filepath.Join(dir, "good.reg"), filepath.Join(dir, "bad.reg")
	if err := regf.CreateFile(h, regf.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(good, []byte("Windows Registry Editor Version 5.00\n\n[Vendor]\n\"a\"=\"b\"\n"), 0o644)
	os.WriteFile(bad, []byte("Windows Registry Editor Version 5.00\n\n[Other]\n\"x\"=bogus\n"), 0o644)
	if err := ApplyFile(h, good, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, k, err := regf.ReadFileKey(h, "Vendor"); err != nil || k.Value("a") == nil {
		t.Fatalf("Vendor\\a not applied: %v", err)
	}
	before, _ := os.ReadFile(h)
	if err := ApplyFile(h, bad, Options{}); err == nil || !strings.Contains(err.Error(), bad+": line 4") {
		t.Errorf("ApplyFile of bad text: %v, want an error naming %s and the line", err, bad)
	}
	if after, _ := os.ReadFile(h); !bytes.Equal(before, after) {
		t.Errorf("a failed ApplyFile changed the hive")
	}
	if err := ApplyFile(h, filepath.Join(dir, "missing.reg"), Options{}); err == nil {
		t.Errorf("ApplyFile of a missing file succeeded")
	}
}
