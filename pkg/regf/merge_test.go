package regf_test

import (
	"bytes"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/internal/regftest"
)

var (
	t0 = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
)

func key(t *testing.T, h *regf.Hive, path string) *regf.Key {
	t.Helper()
	k, err := h.CreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func str(t *testing.T, k *regf.Key, name string) string {
	t.Helper()
	v := k.Value(name)
	if v == nil {
		return "<missing>"
	}
	s, err := v.Text()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// baseHive has one key per semantic to test, each with a value, a class
// and a child.
func baseHive(t *testing.T) *regf.Hive {
	h := regf.New()
	for _, name := range []string{"Merged", "Tomb", "Local", "Tree", "Untouched"} {
		k := key(t, h, name)
		k.Class = "base-class"
		k.Modified = t1
		k.SetValue("a", regf.RegSZ, regf.StringData("base a"))
		k.SetValue("b", regf.RegSZ, regf.StringData("base b"))
		c := key(t, h, name+`\Child`)
		c.SetValue("c", regf.RegSZ, regf.StringData("base c"))
	}
	return h
}

// Every delta travels through a real delta hive file before merging.
func throughFile(t *testing.T, h *regf.Hive) *regf.Hive {
	t.Helper()
	return parse(t, marshal(t, h))
}

func TestMergeSemantics(t *testing.T) {
	base := baseHive(t)
	d := regf.New()
	d.Layered = true

	m := key(t, d, "Merged")
	m.Modified = t0 // older than the base: the base time stays
	m.SetValue("a", regf.RegSZ, regf.StringData("delta a"))
	m.SetTombstone("b")
	m.SetValue("new", regf.RegDWord, regf.DWordData(1))
	m.InheritClass = true
	key(t, d, `Merged\Child`).SetTombstone("c")
	key(t, d, `Merged\Added`).SetValue("x", regf.RegSZ, regf.StringData("added"))

	key(t, d, "Tomb").Layer = regf.LayerTombstone

	l := key(t, d, "Local")
	l.Layer = regf.LayerSupersedeLocal
	l.Class = "delta-class"
	l.SetValue("only", regf.RegSZ, regf.StringData("delta only"))
	key(t, d, `Local\Child`).SetValue("c2", regf.RegSZ, regf.StringData("merged child"))

	tr := key(t, d, "Tree")
	tr.Layer = regf.LayerSupersedeTree
	tr.InheritClass = true
	tr.SetValue("t", regf.RegSZ, regf.StringData("tree"))
	key(t, d, `Tree\NewChild`)
	// A tombstone inside a superseded tree or for a missing key is a no-op.
	key(t, d, `Tree\Ghost`).Layer = regf.LayerTombstone
	key(t, d, "NeverExisted").Layer = regf.LayerTombstone

	got, err := regf.Merge(base, throughFile(t, d))
	if err != nil {
		t.Fatal(err)
	}
	got = throughFile(t, got)
	if got.Layered {
		t.Errorf("merged hive must not be layered")
	}

	mk := got.Lookup("Merged")
	if str(t, mk, "a") != "delta a" || mk.Value("b") != nil || mk.Value("new") == nil {
		t.Errorf("merge values: a=%q b=%v new=%v", str(t, mk, "a"), mk.Value("b"), mk.Value("new"))
	}
	if mk.Class != "base-class" {
		t.Errorf("inherit-class: class %q", mk.Class)
	}
	if !mk.Modified.Equal(t1) {
		t.Errorf("merge must keep the newer time, got %v", mk.Modified)
	}
	if got.Lookup(`Merged\Child`).Value("c") != nil || got.Lookup(`Merged\Added`) == nil {
		t.Errorf("merge children")
	}

	if got.Lookup("Tomb") != nil {
		t.Errorf("tombstoned key survived")
	}
	if got.Lookup("NeverExisted") != nil {
		t.Errorf("tombstone for a missing key created it")
	}

	lk := got.Lookup("Local")
	if lk.Value("a") != nil || str(t, lk, "only") != "delta only" || lk.Class != "delta-class" {
		t.Errorf("supersede-local: values %d class %q", len(lk.Values()), lk.Class)
	}
	if c := got.Lookup(`Local\Child`); c == nil || str(t, c, "c") != "base c" || str(t, c, "c2") != "merged child" {
		t.Errorf("supersede-local must merge children")
	}

	tk := got.Lookup("Tree")
	if tk.Value("a") != nil || str(t, tk, "t") != "tree" || got.Lookup(`Tree\Child`) != nil ||
		got.Lookup(`Tree\NewChild`) == nil || got.Lookup(`Tree\Ghost`) != nil {
		t.Errorf("supersede-tree did not replace the subtree")
	}
	if tk.Class != "" {
		t.Errorf("supersede-tree drops the base, so inherit-class has nothing: %q", tk.Class)
	}
	sameTree(t, base.Lookup("Untouched"), got.Lookup("Untouched"))
	if got.Root.Name() != base.Root.Name() {
		t.Errorf("root renamed")
	}
}

func TestMergeKeepsValueOrderAndSecurity(t *testing.T) {
	base := regf.New()
	k := key(t, base, "K")
	for _, n := range []string{"one", "two", "three"} {
		k.SetValue(n, regf.RegDWord, regf.DWordData(1))
	}
	d := regf.New()
	d.Layered = true
	dk := key(t, d, "k") // other case: same key
	dk.SetValue("TWO", regf.RegDWord, regf.DWordData(2))
	dk.SetValue("four", regf.RegDWord, regf.DWordData(4))
	dk.Security = regftest.AltSecurity()
	got, err := regf.Merge(base, d)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range got.Lookup("K").Values() {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "one,TWO,three,four" {
		t.Errorf("value order %v", names)
	}
	if !bytes.Equal(got.Lookup("K").Security, regftest.AltSecurity()) {
		t.Errorf("delta security descriptor not applied")
	}
	if got.Lookup("K").Name() != "k" {
		t.Errorf("the delta's spelling of the name wins, got %q", got.Lookup("K").Name())
	}
}

func TestMergeRejectsRootTombstone(t *testing.T) {
	d := regf.New()
	d.Layered = true
	d.Root.Layer = regf.LayerTombstone
	if _, err := regf.Merge(regf.New(), d); err == nil {
		t.Errorf("a delta deleting the root must fail")
	}
}

func TestDiffMergeHandPicked(t *testing.T) {
	base := baseHive(t)
	target := throughFile(t, base)
	key(t, target, "Merged").SetValue("a", regf.RegSZ, regf.StringData("changed"))
	target.Lookup("Merged").DeleteValue("b")
	target.DeleteKey("Tomb")
	key(t, target, `Brand\New\Tree`).SetValue("n", regf.RegBinary, make([]byte, 20000))
	target.Lookup("Local").DeleteValue("a")
	target.Lookup("Local").DeleteValue("b")
	target.Lookup("Tree").Class = "new class"
	delta, err := regf.Diff(base, target)
	if err != nil {
		t.Fatal(err)
	}
	delta = throughFile(t, delta)
	if !delta.Layered {
		t.Errorf("Diff must produce a layered hive")
	}
	if delta.Lookup("Untouched") != nil {
		t.Errorf("unchanged keys belong out of the delta")
	}
	if k := delta.Lookup("Tomb"); k == nil || k.Layer != regf.LayerTombstone {
		t.Errorf("deleted key not tombstoned")
	}
	if v := delta.Lookup("Merged").Value("b"); v == nil || !v.Tombstone {
		t.Errorf("deleted value not tombstoned")
	}
	if k := delta.Lookup("Local"); k.Layer != regf.LayerSupersedeLocal {
		t.Errorf("a key that lost all values should supersede locally, got %s", k.Layer)
	}
	got, err := regf.Merge(base, delta)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, target.Root, throughFile(t, got).Root)
}

// TestDiffMergeProperty: for random base and target trees,
// Merge(base, Diff(base, target)) reads the same as target.
func TestDiffMergeProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	for i := 0; i < 300; i++ {
		base := regftest.RandomHive(rng, 3)
		var target *regf.Hive
		if rng.Intn(2) == 0 {
			target = regftest.RandomHive(rng, 3) // unrelated tree
		} else {
			target = throughFile(t, base) // an edit of the base
			mutate(rng, target.Root, 3)
		}
		delta, err := regf.Diff(base, target)
		if err != nil {
			t.Fatal(err)
		}
		got, err := regf.Merge(base, throughFile(t, delta))
		if err != nil {
			t.Fatal(err)
		}
		want := regftest.FlattenMeta(target.Root)
		if d := regftest.Differences(want, regftest.FlattenMeta(throughFile(t, got).Root), 5); len(d) > 0 {
			t.Fatalf("iteration %d: merge(base, diff(base, target)) != target:\n%s", i, strings.Join(d, "\n"))
		}
	}
}

// mutate edits a tree in place: values set and deleted, keys added and
// removed, classes and descriptors changed, names re-cased.
func mutate(rng *rand.Rand, k *regf.Key, depth int) {
	switch rng.Intn(6) {
	case 0:
		regftest.RandomValue(rng, k)
	case 1:
		if vs := k.Values(); len(vs) > 0 {
			k.DeleteValue(vs[rng.Intn(len(vs))].Name)
		}
	case 2:
		k.Class = "changed"
	case 3:
		k.Security = regftest.AltSecurity()
	case 4:
		if subs := k.Subkeys(); len(subs) > 0 {
			k.DeleteSubkey(subs[rng.Intn(len(subs))].Name())
		}
	case 5:
		if c, err := k.CreateSubkey("new"); err == nil {
			regftest.RandomValue(rng, c)
		}
	}
	if depth == 0 {
		return
	}
	for _, s := range k.Subkeys() {
		if rng.Intn(2) == 0 {
			mutate(rng, s, depth-1)
		}
	}
	// Re-case a child: same key for Windows, a rename for the delta.
	if subs := k.Subkeys(); len(subs) > 0 && rng.Intn(8) == 0 {
		s := subs[0]
		k.DeleteSubkey(s.Name())
		c, _ := regf.NewKey(strings.ToUpper(s.Name()))
		c.Class, c.Security = s.Class, s.Security
		for _, v := range s.Values() {
			c.SetValue(v.Name, v.Type, v.Data)
		}
		k.AddSubkey(c)
	}
}
