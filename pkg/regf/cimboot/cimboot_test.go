package cimboot

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
)

func TestEnableSystemHive(t *testing.T) {
	h := regf.New()
	svc, _ := h.CreateKey(`ControlSet001\Services\wcifs`)
	svc.SetValue("Start", regf.RegDWord, regf.DWordData(2))
	svc.SetValue("Type", regf.RegDWord, regf.DWordData(2)) // untouched
	for i := 0; i < 2; i++ {                               // idempotent
		if err := EnableSystemHive(h); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(t.TempDir(), "SYSTEM")
	if err := h.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	got, err := regf.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		key, value string
		want       any
	}{
		{`ControlSet001\Control`, "BootContainerGuid", BootContainerGUID},
		{`ControlSet001\Services\UnionFS`, "Start", uint64(0)},
		{`ControlSet001\Services\wcifs`, "Start", uint64(4)},
		{`ControlSet001\Services\wcifs`, "Type", uint64(2)},
		{`Setup`, "BootPathOverride", `\Windows\`},
	} {
		k := got.Lookup(e.key)
		if k == nil || k.Value(e.value) == nil {
			t.Fatalf("%s\\%s missing", e.key, e.value)
		}
		v := k.Value(e.value)
		var val any
		if _, ok := e.want.(string); ok {
			val, err = v.Text()
		} else {
			val, err = v.Uint()
		}
		if err != nil || val != e.want {
			t.Errorf("%s\\%s = %v (%v), want %v", e.key, e.value, val, err, e.want)
		}
	}
	// hivex sees the same values.
	if out := testutil.Run(t, "hivexget", p, `\ControlSet001\Control`, "BootContainerGuid"); strings.TrimSpace(string(out)) != BootContainerGUID {
		t.Errorf("hivexget: %q", out)
	}
	if out := testutil.Run(t, "hivexget", p, `\Setup`, "BootPathOverride"); strings.TrimSpace(string(out)) != `\Windows\` {
		t.Errorf("hivexget: %q", out)
	}
}
