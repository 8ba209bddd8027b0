package synth_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

func digest(t *testing.T, gen func(io.Writer) (synth.Stats, error)) ([32]byte, synth.Stats) {
	t.Helper()
	h := sha256.New()
	st, err := gen(h)
	if err != nil {
		t.Fatal(err)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d, st
}

// TestDeterministic: the same options give the same bytes, another seed
// other bytes, and the sizes asked for are met.
func TestDeterministic(t *testing.T) {
	o := synth.Options{Seed: 3, Files: 500, Bytes: 2 << 20, UtilityVM: true}
	base := func(o synth.Options) func(io.Writer) (synth.Stats, error) {
		return func(w io.Writer) (synth.Stats, error) { return synth.Base(w, o) }
	}
	d1, st := digest(t, base(o))
	d2, _ := digest(t, base(o))
	if d1 != d2 {
		t.Error("two base layers from one seed differ")
	}
	o2 := o
	o2.Seed = 4
	if d3, _ := digest(t, base(o2)); d3 == d1 {
		t.Error("base layers from different seeds are equal")
	}
	// 500 generated files, 5 hives, the UVM's BCD, 2 hives, 2 files.
	if st.Files != 500+5+5 {
		t.Errorf("%d files", st.Files)
	}
	if st.Bytes < 2<<20 || st.Bytes > 4<<20 {
		t.Errorf("%d bytes of data for about 2 MiB asked", st.Bytes)
	}
	c1, _ := digest(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, o, 9) })
	c2, _ := digest(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, o, 9) })
	if c1 != c2 {
		t.Error("two child layers from one seed differ")
	}
}

// layer reads a generated layer into entries and the data of some paths.
func layer(t *testing.T, gen func(io.Writer) (synth.Stats, error), keep func(string) bool) ([]*wintar.Entry, map[string][]byte) {
	t.Helper()
	pr, pw := io.Pipe()
	go func() {
		_, err := gen(pw)
		pw.CloseWithError(err)
	}()
	r := wintar.NewReader(pr)
	var es []*wintar.Entry
	data := map[string][]byte{}
	for {
		e, err := r.Next()
		if err == io.EOF {
			return es, data
		}
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
		if keep(e.Path) && e.Kind == wintar.KindFile {
			b, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			data[e.Path] = b
		}
	}
}

func isHive(p string) bool {
	return strings.Contains(p, "/config/") || strings.HasPrefix(p, "Hives/") || strings.HasSuffix(p, "/BCD")
}

// TestHivesValidate writes out every hive of a base and a child layer and
// has hivex read them: hivexregedit must export the keys and values we put
// in the full hives; hivexsh must list the keys of the delta hives (hivex
// does not understand layered hives' tombstone values, so no value export).
func TestHivesValidate(t *testing.T) {
	testutil.NeedTool(t, "hivexregedit")
	testutil.NeedTool(t, "hivexsh")
	o := synth.Options{Seed: 5, Files: 50, UtilityVM: true}
	_, base := layer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, o) }, isHive)
	_, child := layer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, o, 6) }, isHive)
	export := map[string][]string{
		"Files/Windows/System32/config/SYSTEM": {`[\ControlSet001\Services\Svc039]`,
			`"ComputerName"=hex(1):53,00,59,00,4e,00,54,00,48,00,2d,00,35,00,00,00`},
		"Files/Windows/System32/config/SOFTWARE": {`[\Microsoft\Windows NT\CurrentVersion]`,
			`"CurrentBuild"=hex(1):32,00,30,00,33,00,34,00,38,00,00,00`, `"Blob"=hex(3):`},
		"Files/Windows/System32/config/SAM":                {`[\SAM\Domains\Account\Users\Names\Administrator]`},
		"Files/Windows/System32/config/SECURITY":           {`[\Policy\PolAdtEv]`},
		"Files/Windows/System32/config/DEFAULT":            {`[\Environment]`, `"TEMP"=hex(2):`},
		"UtilityVM/Files/EFI/Microsoft/Boot/BCD":           {`[\Objects\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\Elements\23000003]`, `[\Objects\{c6ea8e8b-4c0b-4f8a-9b0e-5a1c6f2b8d11}\Elements\22000002]`},
		"UtilityVM/Files/Windows/System32/config/SYSTEM":   {`[\Select]`},
		"UtilityVM/Files/Windows/System32/config/SOFTWARE": {`"CurrentBuild"=hex(1):32,00,30,00,33,00,34,00,38,00,00,00`},
	}
	// hivexsh script and what its output must hold, per delta hive.
	ls := map[string][2]string{
		"Hives/Software_Delta":    {"cd \\Microsoft\\SynthApp\nls\n", "Settings"},
		"Hives/System_Delta":      {"cd \\ControlSet001\\Services\nls\n", "SynthChild"},
		"Hives/Sam_Delta":         {"ls\n", ""},
		"Hives/Security_Delta":    {"ls\n", ""},
		"Hives/DefaultUser_Delta": {"ls\n", ""},
	}
	dir := t.TempDir()
	all := map[string][]byte{}
	for p, b := range base {
		all[p] = b
	}
	for p, b := range child {
		all[p] = b
	}
	if len(all) != len(export)+len(ls) {
		t.Errorf("found %d hives in the layers, want %d", len(all), len(export)+len(ls))
	}
	for p, b := range all {
		f := filepath.Join(dir, strings.ReplaceAll(p, "/", "_"))
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if script, ok := ls[p]; ok {
			cmd := exec.Command("hivexsh", f)
			cmd.Stdin = strings.NewReader(script[0] + "quit\n")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), script[1]) {
				t.Errorf("%s: hivexsh: %v, want %q in\n%s", p, err, script[1], out)
			}
			continue
		}
		out := string(testutil.Run(t, "hivexregedit", "--export", f, `\`))
		for _, w := range export[p] {
			if !strings.Contains(out, w) {
				t.Errorf("%s: hivexregedit --export lacks %s", p, w)
			}
		}
	}
}

// TestDeltasMergeToChild: each delta hive of the child layer, merged onto
// the base layer's hive, gives the child's hive; and the child's whiteouts
// and rewrites name files of the base.
func TestDeltasMergeToChild(t *testing.T) {
	o := synth.Options{Seed: 11, Files: 400}
	baseEntries, baseData := layer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, o) }, isHive)
	childEntries, childData := layer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, o, 12) }, isHive)
	bh, err := synth.BaseHives(11)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := synth.ChildHives(bh, 12)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range synth.HiveNames {
		base, err := regf.Parse(baseData["Files/Windows/System32/config/"+name])
		if err != nil {
			t.Fatal(err)
		}
		delta, err := regf.Parse(childData["Hives/"+synth.DeltaNames[name]])
		if err != nil {
			t.Fatal(err)
		}
		if !delta.Layered {
			t.Errorf("%s delta is not a layered hive", name)
		}
		merged, err := regf.Merge(base, delta)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := flatten(merged.Root), flatten(ch[name].Root); got != want {
			t.Errorf("%s: base + delta differs from the child hive", name)
		}
	}
	if flatten(ch["SOFTWARE"].Root) == flatten(bh["SOFTWARE"].Root) {
		t.Error("the child changed nothing in SOFTWARE")
	}
	inBase := map[string]wintar.Kind{}
	for _, e := range baseEntries {
		inBase[e.Path] = e.Kind
	}
	var whiteouts, rewrites int
	for _, e := range childEntries {
		switch {
		case e.Kind == wintar.KindWhiteout:
			whiteouts++
			if inBase[e.Path] == 0 {
				t.Errorf("whiteout of %s, which the base does not have", e.Path)
			}
		case e.Kind == wintar.KindFile && inBase[e.Path] == wintar.KindFile:
			rewrites++
		}
	}
	if whiteouts < 5 || rewrites < 5 {
		t.Errorf("%d whiteouts and %d rewrites in the child", whiteouts, rewrites)
	}
}

// flatten renders a key tree: paths, classes and values.
func flatten(k *regf.Key) string {
	var b strings.Builder
	_ = k.Walk(func(k *regf.Key) error {
		fmt.Fprintf(&b, "[%s] %q\n", k.Path(), k.Class)
		for _, v := range k.Values() {
			fmt.Fprintf(&b, "  %q %d %x %v\n", v.Name, v.Type, v.Data, v.Tombstone)
		}
		return nil
	})
	return b.String()
}

// TestStreamsLargeLayer generates a 128 MiB layer into a counter: the
// generator streams its content, so it allocates far less than that.
func TestStreamsLargeLayer(t *testing.T) {
	var n countWriter
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	st, err := synth.Base(&n, synth.Options{Seed: 1, Files: 1000, Bytes: 128 << 20})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if int64(n) < st.Bytes || st.Bytes < 100<<20 {
		t.Fatalf("wrote %d bytes for %d of data", n, st.Bytes)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(st.Bytes)/8 {
		t.Errorf("allocated %d bytes generating %d bytes of data", alloc, st.Bytes)
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
