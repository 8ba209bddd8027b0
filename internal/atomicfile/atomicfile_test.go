package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
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
