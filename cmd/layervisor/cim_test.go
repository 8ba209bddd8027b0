package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/cimfs"
)

func TestCimCLI(t *testing.T) {
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root")}
	dir := t.TempDir()
	w, err := cimfs.Create(dir, "l.cim", nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	sd := append([]byte{1, 0, 4, 0x80}, make([]byte, 16)...)
	for _, err := range []error{
		w.Add("Files", cimfs.FileInfo{Attributes: cimfs.AttrDirectory, LastWriteTime: ts}, nil),
		w.Add("Files/a.txt", cimfs.FileInfo{Attributes: cimfs.AttrArchive, LastWriteTime: ts, SecurityDescriptor: sd}, strings.NewReader("alpha\n")),
		w.AddAlternateStream("Files/a.txt", "zone", strings.NewReader("z")),
		w.AddLink("Files/a.txt", "Files/b.txt"),
		w.Commit(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	cim := filepath.Join(dir, "l.cim")

	if out := c.ok("cim", "ls", cim); !strings.HasSuffix(out, " Files\n") || !strings.HasPrefix(out, "d-----") {
		t.Errorf("ls = %q", out)
	}
	var ls []struct {
		Path string
		Size int64
	}
	if err := json.Unmarshal([]byte(c.ok("--json", "cim", "ls", "-r", cim)), &ls); err != nil || len(ls) != 3 ||
		ls[1].Path != "Files/a.txt" || ls[1].Size != 6 || ls[2].Path != "Files/b.txt" {
		t.Errorf("ls -r --json: %+v %v", ls, err)
	}
	var st struct {
		FileID  uint32 `json:"fileID"`
		SD      string `json:"securityDescriptor"`
		Links   []cimfs.Link
		Streams []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(c.ok("--json", "cim", "stat", cim, `files\B.TXT`)), &st); err != nil ||
		st.SD != "0100048000000000000000000000000000000000" || len(st.Links) != 2 || len(st.Streams) != 1 || st.Streams[0].Name != "zone" {
		t.Errorf("stat --json: %+v %v", st, err)
	}
	if out := c.ok("cim", "cat", cim, "Files/a.txt"); out != "alpha\n" {
		t.Errorf("cat = %q", out)
	}
	if out := c.ok("cim", "cat", "--stream", "zone", cim, "Files/a.txt"); out != "z" {
		t.Errorf("cat --stream = %q", out)
	}
	c.fail("Files/nope: file does not exist", "cim", "cat", cim, "Files/nope")
	c.fail("is a directory", "cim", "cat", cim, "Files")
	bad := filepath.Join(t.TempDir(), "bad.cim")
	if err := os.WriteFile(bad, []byte(strings.Repeat("not a cim ", 20)), 0o644); err != nil {
		t.Fatal(err)
	}
	c.fail(bad+": bad magic", "cim", "ls", bad)

	out := filepath.Join(t.TempDir(), "x")
	c.ok("cim", "extract", cim, out)
	if b, err := os.ReadFile(filepath.Join(out, "Files", "a.txt")); err != nil || string(b) != "alpha\n" {
		t.Errorf("extracted a.txt %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "Files", "a.txt:zone")); err != nil || string(b) != "z" {
		t.Errorf("extracted stream %q %v", b, err)
	}
	sa, err1 := os.Stat(filepath.Join(out, "Files", "a.txt"))
	sb, err2 := os.Stat(filepath.Join(out, "Files", "b.txt"))
	if err1 != nil || err2 != nil || !os.SameFile(sa, sb) || !sa.ModTime().Equal(ts) {
		t.Errorf("hard link not kept: %v %v", err1, err2)
	}
	c.fail("already exists", "cim", "extract", cim, out)
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("extract left %d entries beside the output", len(ents))
	}

	if out := c.ok("cim", "--help"); !strings.Contains(out, "extract") {
		t.Errorf("help = %q", out)
	}

	// The real cimfs.dll image reads through the CLI too.
	t.Run("real image", func(t *testing.T) {
		real := filepath.Join(testutil.SharedTestdata(t, "windows", "cimfs"), "test.cim")
		rc := &cli{t: t, bin: c.bin, root: c.root}
		if out := rc.ok("cim", "cat", real, "hello.txt"); out != "Hello world!" {
			t.Errorf("real hello.txt = %q", out)
		}
	})
}
