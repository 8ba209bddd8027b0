package regf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/internal/regftest"
)

func marshal(t testing.TB, h *regf.Hive) []byte {
	t.Helper()
	b, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := regf.VerifyLayout(b); err != nil {
		t.Fatalf("written hive fails the layout check: %v", err)
	}
	return b
}

func parse(t testing.TB, b []byte) *regf.Hive {
	t.Helper()
	h, err := regf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func sameTree(t testing.TB, want, got *regf.Key) {
	t.Helper()
	if d := regftest.Differences(regftest.FlattenMeta(want), regftest.FlattenMeta(got), 5); len(d) > 0 {
		t.Fatalf("trees differ:\n%s", strings.Join(d, "\n"))
	}
}

func TestRoundTripSample(t *testing.T) {
	h := regftest.Sample()
	b := marshal(t, h)
	got := parse(t, b)
	sameTree(t, h.Root, got.Root)
	if got.Dirty || got.Layered || got.MinorVersion != 5 {
		t.Errorf("dirty=%v layered=%v minor=%d", got.Dirty, got.Layered, got.MinorVersion)
	}
	// Times survive at 100 ns resolution.
	if !got.Root.Modified.Equal(h.Root.Modified) {
		t.Errorf("root time %v, want %v", got.Root.Modified, h.Root.Modified)
	}
	// Writing what we read gives the same bytes apart from the sequence
	// numbers and checksum: the layout is deterministic.
	b2 := marshal(t, got)
	if !bytes.Equal(b[512:], b2[512:]) || !bytes.Equal(b[12:508], b2[12:508]) {
		t.Errorf("re-marshal changed the hive body")
	}
	if binary.LittleEndian.Uint32(b2[4:]) != binary.LittleEndian.Uint32(b[4:])+1 {
		t.Errorf("sequence number not advanced")
	}
}

func TestValueEncodings(t *testing.T) {
	h := regftest.Sample()
	k := h.Lookup(`software\TYPES`)
	if k == nil {
		t.Fatal("case-insensitive lookup failed")
	}
	got := parse(t, marshal(t, h)).Lookup(`Software\Types`)
	for _, tc := range []struct {
		name string
		want any
	}{
		{"", "default value"}, {"sz", `C:\Windows "quoted"`}, {"expand", `%SystemRoot%\system32`},
		{"dword", uint64(0xdeadbeef)}, {"dwordbe", uint64(0x12345678)}, {"qword", uint64(0x0102030405060708)},
		{"multi", []string{"one", "two", "three"}},
	} {
		v := got.Value(tc.name)
		if v == nil {
			t.Fatalf("value %q missing", tc.name)
		}
		var val any
		var err error
		switch tc.want.(type) {
		case string:
			val, err = v.Text()
		case uint64:
			val, err = v.Uint()
		case []string:
			var ss []string
			ss, err = v.Strings()
			val = strings.Join(ss, "|")
			tc.want = strings.Join(tc.want.([]string), "|")
		}
		if err != nil || val != tc.want {
			t.Errorf("%q = %v (%v), want %v", tc.name, val, err, tc.want)
		}
	}
	if v := got.Value("bigger"); len(v.Data) != 100_000 {
		t.Errorf("big data value has %d bytes", len(v.Data))
	}
	if _, err := got.Value("binary").Text(); err == nil {
		t.Errorf("Text of REG_BINARY should fail")
	}
}

func TestEditAPI(t *testing.T) {
	h := regf.New()
	k, err := h.CreateKey(`A\B\C`)
	if err != nil {
		t.Fatal(err)
	}
	if k.Path() != `A\B\C` || k.Parent().Name() != "B" {
		t.Errorf("path %q", k.Path())
	}
	if again, _ := h.CreateKey(`a\b\c`); again != k {
		t.Errorf("CreateKey of an existing path (other case) made a new key")
	}
	for _, bad := range []string{`A\` + strings.Repeat("x", 256)} {
		if _, err := h.CreateKey(bad); err == nil {
			t.Errorf("CreateKey(%q) should fail", bad)
		}
	}
	k.SetValue("V", regf.RegDWord, regf.DWordData(1))
	k.SetValue("v", regf.RegDWord, regf.DWordData(2)) // same name, other case
	if len(k.Values()) != 1 {
		t.Errorf("SetValue must replace case-insensitively")
	}
	if !k.DeleteValue("V") || k.DeleteValue("V") {
		t.Errorf("DeleteValue")
	}
	if err := h.DeleteKey(`a\B`); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteKey(`A\B`); !errors.Is(err, regf.ErrNotFound) {
		t.Errorf("deleting a missing key: %v", err)
	}
	if err := h.DeleteKey(``); err == nil {
		t.Errorf("deleting the root must fail")
	}
	if h.Lookup(`A\B\C`) != nil || h.Lookup(`A`) == nil {
		t.Errorf("DeleteKey removed the wrong keys")
	}
	// Subkeys stay in Windows order whatever the insertion order.
	for _, n := range []string{"zeta", "Alpha", "_under", "beta", "ÄÖ"} {
		h.Root.CreateSubkey(n)
	}
	var names []string
	for _, s := range h.Root.Subkeys() {
		names = append(names, s.Name())
	}
	if got := strings.Join(names, ","); got != "A,Alpha,beta,zeta,_under,ÄÖ" {
		t.Errorf("order %s", got)
	}
	parse(t, marshal(t, h))
}

func TestLayeredRoundTrip(t *testing.T) {
	h := regf.New()
	h.Layered = true
	for i, sem := range []regf.LayerSemantics{regf.LayerMerge, regf.LayerTombstone, regf.LayerSupersedeLocal, regf.LayerSupersedeTree} {
		k, _ := h.CreateKey(sem.String())
		k.Layer = sem
		k.InheritClass = i%2 == 0
	}
	k := h.Lookup("merge")
	k.SetTombstone("gone")
	k.SetValue("kept", regf.RegSZ, regf.StringData("x"))
	b := marshal(t, h)
	if binary.LittleEndian.Uint32(b[24:]) != 6 || binary.LittleEndian.Uint32(b[144:])&2 == 0 {
		t.Errorf("delta hive must be version 1.6 with the layered flag")
	}
	got := parse(t, b)
	if !got.Layered {
		t.Errorf("Layered not read back")
	}
	sameTree(t, h.Root, got.Root)
	if v := got.Lookup("merge").Value("gone"); v == nil || !v.Tombstone || v.Type != regf.RegNone {
		t.Errorf("tombstone value not read back: %+v", v)
	}
}

func TestDirtyHiveReported(t *testing.T) {
	b := marshal(t, regf.New())
	binary.LittleEndian.PutUint32(b[4:], 7) // primary != secondary
	regf.FixChecksum(b)
	h, err := regf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Dirty {
		t.Errorf("a hive with unequal sequence numbers must be reported dirty")
	}
	out := parse(t, marshal(t, h))
	if out.Dirty {
		t.Errorf("rewritten hive still dirty")
	}
}

func TestSecurityShared(t *testing.T) {
	h := regftest.Sample()
	b := marshal(t, h) // VerifyLayout checks reference counts and links
	got := parse(t, b)
	if sd := got.Lookup(`Software\Secured\Child`).Security; !bytes.Equal(sd, regftest.AltSecurity()) {
		t.Errorf("child does not inherit its parent's descriptor")
	}
	if sd := got.Lookup(`Many`).Security; !bytes.Equal(sd, regf.DefaultSecurity()) {
		t.Errorf("default descriptor lost")
	}
	if n := bytes.Count(b, []byte("sk\x00\x00")); n != 2 {
		t.Errorf("%d sk cells, want 2 shared ones", n)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "h")
	h := regftest.Sample()
	if err := h.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	got, err := regf.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, h.Root, got.Root)
	// A tree too deep to write leaves the old file alone.
	k := h.Root
	for i := 0; i <= regf.MaxDepth+1; i++ {
		k, _ = k.CreateSubkey("d")
	}
	if err := h.WriteFile(p); err == nil {
		t.Fatal("writing a too-deep tree should fail")
	}
	if _, err := regf.ReadFile(p); err != nil {
		t.Errorf("old file damaged: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	if _, err := regf.ReadFile(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("missing file should fail")
	}
	os.WriteFile(p, []byte("junk"), 0o644)
	if _, err := regf.ReadFile(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("error should name the file: %v", err)
	}
}

func TestTimestamps(t *testing.T) {
	h := regf.New()
	ts := time.Date(2001, 2, 3, 4, 5, 6, 700, time.UTC)
	k, _ := h.CreateKey("T")
	k.Modified = ts
	if got := parse(t, marshal(t, h)).Lookup("T").Modified; !got.Equal(ts) {
		t.Errorf("time %v, want %v", got, ts)
	}
}
