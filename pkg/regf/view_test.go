package regf_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
)

var fixedTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// viewHive is a small hive with a class, every kind of layer note and a
// tombstone value; every key has fixedTime.
func viewHive(t *testing.T, layered bool) *regf.Hive {
	t.Helper()
	h := regf.New()
	h.Layered = layered
	if layered {
		h.MinorVersion = 6
	}
	k, err := h.CreateKey(`Software\Vendor`)
	if err != nil {
		t.Fatal(err)
	}
	k.Class = "cls"
	k.SetValue("", regf.RegSZ, regf.StringData("def"))
	k.SetValue("n", regf.RegDWord, regf.DWordData(42))
	k.SetValue("bin", regf.RegBinary, []byte{0xde, 0xad})
	if layered {
		k.Layer, k.InheritClass = regf.LayerSupersedeLocal, true
		k.SetTombstone("old")
		g, _ := h.CreateKey(`Software\Gone`)
		g.Layer = regf.LayerTombstone
	}
	h.Root.Walk(func(k *regf.Key) error { k.Modified = fixedTime; return nil })
	return h
}

func TestDump(t *testing.T) {
	for _, tc := range []struct {
		layered bool
		want    string
	}{
		{false, `ROOT
  Software
    Vendor (class "cls")
      @ REG_SZ "def"
      "n" REG_DWORD 42 (0x2a)
      "bin" REG_BINARY hex:dead
`},
		{true, `ROOT
  Software
    Gone (tombstone)
    Vendor (class "cls", supersede-local, inherit-class)
      @ REG_SZ "def"
      "n" REG_DWORD 42 (0x2a)
      "bin" REG_BINARY hex:dead
      "old" REG_NONE (deleted)
`},
	} {
		h := viewHive(t, tc.layered)
		var b strings.Builder
		if err := h.Dump(&b, h.Root); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("Dump (layered %v):\n%s\nwant:\n%s", tc.layered, b.String(), tc.want)
		}
	}
	// A subtree starts at depth 0.
	h := viewHive(t, false)
	var b strings.Builder
	h.Dump(&b, h.Lookup(`Software\Vendor`))
	if !strings.HasPrefix(b.String(), "Vendor (class \"cls\")\n  @ REG_SZ") {
		t.Errorf("Dump of a subtree:\n%s", b.String())
	}
}

// failWriter accepts n writes, then fails every one.
type failWriter struct{ n, calls int }

func (w *failWriter) Write(p []byte) (int, error) {
	w.calls++
	if w.calls > w.n {
		return 0, fs.ErrClosed
	}
	return len(p), nil
}

func TestDumpWriteError(t *testing.T) {
	h := viewHive(t, true)
	w := &failWriter{n: 2}
	if err := h.Dump(w, h.Root); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("Dump into a failing writer: %v, want its error", err)
	}
	if w.calls != 3 {
		t.Errorf("Dump kept writing after an error: %d writes", w.calls)
	}
}

// The JSON shape is an interface (`hive dump/get --json`): field names,
// omissions and nesting are pinned here byte for byte.
func TestKeyJSON(t *testing.T) {
	ts := `"modified":"2024-01-02T03:04:05Z"`
	vendor := `"values":[{"name":"","type":"REG_SZ","data":"def","hex":"6400650066000000"},` +
		`{"name":"n","type":"REG_DWORD","data":42,"hex":"2a000000"},` +
		`{"name":"bin","type":"REG_BINARY","data":"dead","hex":"dead"}`
	for _, tc := range []struct {
		layered, deep bool
		key           string
		want          string
	}{
		{false, true, "", `{"name":"ROOT","path":"",` + ts + `,"values":[],"subkeys":[` +
			`{"name":"Software","path":"Software",` + ts + `,"values":[],"subkeys":[` +
			`{"name":"Vendor","path":"Software\\Vendor","class":"cls",` + ts + `,` + vendor + `]}]}],` +
			`"hive":{"version":"1.5","layered":false,"dirty":false}}`},
		{false, false, "Software", `{"name":"Software","path":"Software",` + ts + `,"values":[],"subkeyNames":["Vendor"],` +
			`"hive":{"version":"1.5","layered":false,"dirty":false}}`},
		{true, false, `Software\Vendor`, `{"name":"Vendor","path":"Software\\Vendor","class":"cls",` + ts +
			`,"layer":"supersede-local","inheritClass":true,` + vendor +
			`,{"name":"old","type":"REG_NONE","data":"","hex":"","tombstone":true}],` +
			`"hive":{"version":"1.6","layered":true,"dirty":false}}`},
		{true, true, `Software\Gone`, `{"name":"Gone","path":"Software\\Gone",` + ts + `,"layer":"tombstone","values":[],` +
			`"hive":{"version":"1.6","layered":true,"dirty":false}}`},
	} {
		h := viewHive(t, tc.layered)
		k, err := h.OpenKey(tc.key)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(h.KeyJSON(k, tc.deep))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("KeyJSON(%q, deep %v):\n got %s\nwant %s", tc.key, tc.deep, b, tc.want)
		}
	}
	// A multi-string decodes to a list, an empty one to [] (never null);
	// a replayed dirty hive says so.
	h := regf.New()
	k, _ := h.CreateKey("K")
	k.SetValue("m", regf.RegMultiSZ, regf.MultiStringData([]string{"a", "b"}))
	k.SetValue("e", regf.RegMultiSZ, regf.MultiStringData(nil))
	h.Dirty, h.Replayed = true, 3
	j := h.KeyJSON(k, false)
	b, _ := json.Marshal(j.Values)
	if want := `[{"name":"m","type":"REG_MULTI_SZ","data":["a","b"],"hex":"61000000620000000000"},` +
		`{"name":"e","type":"REG_MULTI_SZ","data":[],"hex":"0000"}]`; string(b) != want {
		t.Errorf("multi-string values: %s, want %s", b, want)
	}
	if b, _ := json.Marshal(j.Hive); string(b) != `{"version":"1.5","layered":false,"dirty":true,"replayedLogEntries":3}` {
		t.Errorf("dirty hive header: %s", b)
	}
}

func TestOpenKey(t *testing.T) {
	h := viewHive(t, false)
	if k, err := h.OpenKey(`SOFTWARE\vendor`); err != nil || k.Name() != "Vendor" {
		t.Errorf("OpenKey is not case-insensitive: %v, %v", k, err)
	}
	if k, err := h.OpenKey(""); err != nil || k != h.Root {
		t.Errorf(`OpenKey("") = %v, %v; want the root`, k, err)
	}
	if _, err := h.OpenKey(`Software\Nope`); !errors.Is(err, regf.ErrNotFound) || !strings.Contains(err.Error(), `"Software\\Nope"`) {
		t.Errorf("OpenKey of a missing key: %v, want ErrNotFound naming it", err)
	}
}

// EditFile writes the whole edit or nothing.
func TestEditFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "h")
	if err := regf.New().WriteFile(path); err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Add(-time.Second)
	if err := regf.EditFile(path, func(h *regf.Hive) error {
		k, err := h.CreateKey("A")
		if err != nil {
			return err
		}
		return k.SetValue("v", regf.RegDWord, regf.DWordData(7))
	}); err != nil {
		t.Fatal(err)
	}
	h, err := regf.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v := h.Lookup("A").Value("v"); v == nil || v.PlainText() != "7" {
		t.Errorf("edit not written: %v", v)
	}
	if h.Modified.Before(start) {
		t.Errorf("hive time %v not stamped by the edit (started %v)", h.Modified, start)
	}

	before, _ := os.ReadFile(path)
	boom := errors.New("boom")
	err = regf.EditFile(path, func(h *regf.Hive) error {
		h.CreateKey("B")
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), path) {
		t.Errorf("failed edit: %v, want the edit's error naming %s", err, path)
	}
	os.WriteFile(filepath.Join(dir, "junk"), []byte("not a hive"), 0o644)
	for _, p := range []string{filepath.Join(dir, "missing"), filepath.Join(dir, "junk")} {
		if err := regf.EditFile(p, func(*regf.Hive) error { t.Errorf("edit called for %s", p); return nil }); err == nil ||
			!strings.Contains(err.Error(), p) {
			t.Errorf("EditFile(%s): %v, want an error naming it", p, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a failed edit changed the file")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("files left behind: %v", ents)
	}
}

// A real container delta hive (System_Delta, written by Windows): the dump
// and the JSON show its layer semantics as counted by an independent
// reader (see ../shared/testdata/windows/README.md beside the repository).
func TestViewRealDeltaHive(t *testing.T) {
	src := filepath.Join(testutil.SharedTestdata(t, "windows", "hives"), "System_Delta.xz")
	b, err := exec.Command(testutil.NeedTool(t, "xz"), "-dc", src).Output()
	if err != nil {
		t.Fatalf("xz -dc %s: %v", src, err)
	}
	h, err := regf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	var walk func(k *regf.KeyJSON)
	walk = func(k *regf.KeyJSON) {
		counts["keys"]++
		counts[k.Layer]++
		if k.InheritClass {
			counts["inherit-class"]++
		}
		for _, v := range k.Values {
			counts["values"]++
			if v.Tombstone {
				counts["value tombstones"]++
			}
		}
		for _, s := range k.Subkeys {
			walk(s)
		}
	}
	j := h.KeyJSON(h.Root, true)
	walk(j)
	if j.Hive.Version != "1.6" || !j.Hive.Layered {
		t.Errorf("header %+v, want a layered 1.6 hive", j.Hive)
	}
	want := map[string]int{"keys": 586, "values": 820, "tombstone": 2, "supersede-tree": 62, "inherit-class": 515, "value tombstones": 3}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("JSON tree: %d %s, want %d", counts[k], k, n)
		}
	}

	var dump strings.Builder
	if err := h.Dump(&dump, h.Root); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(dump.String(), "\n"), "\n")
	var deleted, inherit, tomb int
	for _, l := range lines {
		deleted += b2i(strings.HasSuffix(l, " (deleted)"))
		inherit += b2i(strings.HasSuffix(l, "inherit-class)"))
		tomb += b2i(strings.HasSuffix(l, "(tombstone)") || strings.Contains(l, "(tombstone,") || strings.Contains(l, ", tombstone"))
	}
	if len(lines) != 586+820 || deleted != 3 || inherit != 515 || tomb != 2 {
		t.Errorf("dump: %d lines, %d deleted values, %d inherit-class, %d tombstones; want %d, 3, 515, 2",
			len(lines), deleted, inherit, tomb, 586+820)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
