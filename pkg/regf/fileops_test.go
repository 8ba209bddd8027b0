package regf

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileOps(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "SOFTWARE")
	if err := CreateFile(p, CreateOptions{RootName: "SW"}); err != nil {
		t.Fatal(err)
	}
	if err := CreateFile(p, CreateOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("CreateFile over an existing file: %v", err)
	}
	if err := CreateFileKey(p, `A\Empty`); err != nil {
		t.Fatal(err)
	}
	if err := SetFileValue(p, `A\B`, "v", RegDWord, []byte{42, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	h, k, err := ReadFileKey(p, `a\b`)
	if err != nil {
		t.Fatal(err)
	}
	if h.Root.Name() != "SW" || k.Value("v") == nil || !bytes.Equal(k.Value("v").Data, []byte{42, 0, 0, 0}) {
		t.Errorf("read back: root %q, value %+v", h.Root.Name(), k.Value("v"))
	}
	if _, _, err := ReadFileKey(p, "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), p) {
		t.Errorf("ReadFileKey of a missing key: %v, want ErrNotFound naming the file", err)
	}

	// Failed edits leave the file as it was.
	before, _ := os.ReadFile(p)
	for _, err := range []error{
		DeleteFileValue(p, `A\B`, "nope"),
		DeleteFileValue(p, `A\Nope`, "v"),
		DeleteFileKey(p, `A\Nope`),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("delete of something missing: %v, want ErrNotFound", err)
		}
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Errorf("a failed delete changed the file")
	}
	if err := DeleteFileValue(p, `A\B`, "v"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteFileKey(p, `A\Empty`); err != nil {
		t.Fatal(err)
	}

	// Diff then Merge of two files gives the target back.
	target := filepath.Join(dir, "target")
	if err := CreateFile(target, CreateOptions{RootName: "SW"}); err != nil {
		t.Fatal(err)
	}
	if err := SetFileValue(target, `X`, "s", RegSZ, StringData("hi")); err != nil {
		t.Fatal(err)
	}
	delta, merged := filepath.Join(dir, "delta"), filepath.Join(dir, "merged")
	if err := CombineFiles(p, target, delta, Diff); err != nil {
		t.Fatal(err)
	}
	if err := CombineFiles(p, delta, merged, Merge); err != nil {
		t.Fatal(err)
	}
	if _, k, err := ReadFileKey(merged, "X"); err != nil || k.Value("s") == nil {
		t.Errorf("merge of the diff lacks X\\s: %v", err)
	}
	if err := CombineFiles(p, filepath.Join(dir, "missing"), filepath.Join(dir, "out"), Merge); err == nil {
		t.Errorf("CombineFiles with a missing input succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Errorf("a failed CombineFiles wrote its output (%v)", err)
	}
}
