package diskformat

import "testing"

func TestParse(t *testing.T) {
	if f, err := Parse("vhd", Raw, VHD, VHDX); err != nil || f != VHD {
		t.Fatalf("Parse(vhd) = %q, %v", f, err)
	}
	for _, tc := range []struct {
		in   string
		want []Format
		msg  string
	}{
		{"qcow9", []Format{Raw, VHD, VHDX}, `unknown disk format "qcow9" (want raw, vhd or vhdx)`},
		{"vhd", []Format{Raw, VHDX}, `unknown disk format "vhd" (want raw or vhdx)`},
		{"VHDX", []Format{VHDX}, `unknown disk format "VHDX" (want vhdx)`},
		{"", []Format{Raw}, `unknown disk format "" (want raw)`},
	} {
		if _, err := Parse(tc.in, tc.want...); err == nil || err.Error() != tc.msg {
			t.Errorf("Parse(%q, %v) = %v, want %s", tc.in, tc.want, err, tc.msg)
		}
	}
}

func TestValidAttachable(t *testing.T) {
	for _, f := range []Format{Raw, VHD, VHDFixed, VHDDynamic, VHDX, QCOW2} {
		if !f.Valid() || f.Attachable() == (f == VHD) {
			t.Errorf("%s: valid %v, attachable %v", f, f.Valid(), f.Attachable())
		}
	}
	for _, f := range []Format{"", "VHDX", "vpc"} {
		if f.Valid() || f.Attachable() {
			t.Errorf("%q is valid", f)
		}
	}
}

func TestFromName(t *testing.T) {
	for name, want := range map[string]Format{"a.vhdx": VHDX, "B.AVHDX": VHDX, "l.vhd": VHD, "s.img": Raw, "d.raw": Raw, "x.bin": Raw, "noext": "", "a.qcow2": ""} {
		f, ok := FromName("/d/" + name)
		if f != want || ok != (want != "") {
			t.Errorf("FromName(%s) = %q, %v; want %q", name, f, ok, want)
		}
	}
}
