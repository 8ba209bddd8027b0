package bcd

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/regtext"
)

const loader = "{11111111-2222-3333-4444-555555555555}"

func TestStoreRoundTrip(t *testing.T) {
	s := New()
	if err := s.CreateObject(BootManager, 0x10100002); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateObject(loader, 0x10200003); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetObject(BootManager, DefaultObject, loader))
	must(s.SetString(Default, Description, "Utility VM"))
	must(s.SetBootPaths(Default, `\UtilityVM\Files\Windows\System32\winload.efi`, `\UtilityVM\Files\Windows`))
	must(s.SetBoolean(loader, TestSigning, true))
	must(s.SetBoolean(loader, RestartOnFailure, false))
	must(s.SetInteger(loader, 0x25000004, 30)) // an integer element, e.g. a timeout
	must(s.SetObjectList(BootManager, 0x24000001, []string{loader}))

	p := filepath.Join(t.TempDir(), "BCD")
	must(s.Hive().WriteFile(p))
	h, err := regf.ReadFile(p)
	must(err)
	s2, err := Open(h)
	must(err)
	o, err := s2.Object(Default)
	must(err)
	if o.ID != loader || o.Type != 0x10200003 || len(o.Elements) != 6 {
		t.Errorf("object %+v", o)
	}
	if v, err := s2.String(loader, Path); err != nil || v != `\UtilityVM\Files\Windows\System32\winload.efi` {
		t.Errorf("path %q %v", v, err)
	}
	if v, err := s2.Boolean(loader, TestSigning); err != nil || !v {
		t.Errorf("testsigning %v %v", v, err)
	}
	if v, err := s2.Boolean(loader, RestartOnFailure); err != nil || v {
		t.Errorf("restartonfailure %v %v", v, err)
	}
	if v, err := s2.Integer(loader, 0x25000004); err != nil || v != 30 {
		t.Errorf("integer %v %v", v, err)
	}
	objs, err := s2.Objects()
	must(err)
	if len(objs) != 2 {
		t.Errorf("%d objects", len(objs))
	}
	// hivex sees the elements where Windows looks for them.
	out := testutil.Run(t, "hivexregedit", "--export", p, `\Objects\`+loader+`\Elements\22000002`)
	check := regf.New()
	must(regtext.Apply(check, bytes.NewReader(out), regtext.Options{}))
	if v := check.Lookup(`Objects\` + loader + `\Elements\22000002`).Value("Element"); v == nil {
		t.Errorf("hivex export lacks the element:\n%s", out)
	} else if s, _ := v.Text(); s != `\UtilityVM\Files\Windows` {
		t.Errorf("hivex reads systemroot %q", s)
	}
}

func TestLimitations(t *testing.T) {
	s := New()
	s.CreateObject(loader, 0x10200003)
	if err := s.SetDevice(loader, OSDevice, "partition=C:"); !errors.Is(err, ErrNotPublic) {
		t.Errorf("SetDevice: %v", err)
	}
	if err := s.SetString(loader, TestSigning, "x"); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("string into a boolean element: %v", err)
	}
	if _, err := s.Object("{00000000-0000-0000-0000-000000000000}"); !errors.Is(err, regf.ErrNotFound) {
		t.Errorf("missing object: %v", err)
	}
	if _, err := s.Object(Default); err == nil {
		t.Errorf("{default} without a boot manager should fail")
	}
	if _, err := Open(regf.New()); err == nil {
		t.Errorf("a hive without Objects is not a store")
	}
	if err := s.CreateObject("nobraces", 1); err == nil {
		t.Errorf("bad id accepted")
	}
}
