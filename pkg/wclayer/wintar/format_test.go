package wintar

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// TestEncodeReparse checks reparse buffers byte by byte against the
// REPARSE_DATA_BUFFER layout (MS-FSCC 2.1.2.4 symlink, 2.1.2.5 mount point).
func TestEncodeReparse(t *testing.T) {
	for _, tc := range []struct {
		target   string
		junction bool
		want     string
	}{
		{`C:\U`, true, "03 00 00 a0 2400 0000" + // tag, data length 36, reserved
			"0000 1000 1200 0800" + // substitute 0+16, print 18+8
			"5c00 3f00 3f00 5c00 4300 3a00 5c00 5500 0000" + // \??\C:\U NUL
			"4300 3a00 5c00 5500 0000"}, // C:\U NUL
		{`..\a`, false, "0c 00 00 a0 2000 0000" + // tag, data length 32
			"0000 0800 0a00 0800 01000000" + // names, flags = relative
			"2e00 2e00 5c00 6100 0000" + "2e00 2e00 5c00 6100 0000"},
		{`C:\U`, false, "0c 00 00 a0 2800 0000" + // tag, data length 40
			"0000 1000 1200 0800 00000000" + // names, flags = absolute
			"5c00 3f00 3f00 5c00 4300 3a00 5c00 5500 0000" + "4300 3a00 5c00 5500 0000"},
	} {
		got := EncodeReparse(tc.target, tc.junction)
		if want := unhex(t, tc.want); string(got) != string(want) {
			t.Errorf("%s junction=%v:\n got %x\nwant %x", tc.target, tc.junction, got, want)
		}
		target, junction, err := DecodeReparse(got)
		if err != nil || target != tc.target || junction != tc.junction {
			t.Errorf("decode %s: %q %v %v", tc.target, target, junction, err)
		}
	}
	// NT forms of the other absolute spellings.
	for target, nt := range map[string]string{
		`\\server\share\x`: `\??\UNC\server\share\x`,
		`\\?\C:\x`:         `\??\C:\x`,
		`\Windows`:         `\Windows`,
	} {
		b := EncodeReparse(target, false)
		off, n := binary.LittleEndian.Uint16(b[8:]), binary.LittleEndian.Uint16(b[10:])
		if got := utf16le.Decode(b[20+off : 20+off+n]); got != nt {
			t.Errorf("%s: substitute name %q, want %q", target, got, nt)
		}
		if rel := binary.LittleEndian.Uint32(b[16:]); (rel == 1) != (target == `\Windows`) {
			t.Errorf("%s: relative flag %d", target, rel)
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 16), EncodeReparse(`C:\x`, true)[:20]} {
		if _, _, err := DecodeReparse(bad); err == nil {
			t.Errorf("DecodeReparse(%x) accepted", bad)
		}
	}
}

// TestEAs checks the FILE_FULL_EA_INFORMATION chain byte by byte.
func TestEAs(t *testing.T) {
	eas := []EA{{Name: "AB", Value: []byte{1, 2, 3}, Flags: 0x80}, {Name: "C", Value: nil}}
	got, err := EncodeEAs(eas)
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "10000000 80 02 0300 414200 010203 00 00"+ // next 16, padded to 4
		"00000000 00 01 0000 4300")
	if string(got) != string(want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
	back, err := DecodeEAs(got)
	if err != nil || len(back) != 2 || back[0].Name != "AB" || string(back[0].Value) != "\x01\x02\x03" || back[0].Flags != 0x80 || back[1].Name != "C" {
		t.Fatalf("decoded %+v, %v", back, err)
	}
	for _, bad := range [][]byte{got[:10], append(append([]byte(nil), got[:4]...), 0xff), unhex(t, "03000000 00 01 0000 4300")} {
		if _, err := DecodeEAs(bad); err == nil {
			t.Errorf("DecodeEAs(%x) accepted", bad)
		}
	}
	if _, err := EncodeEAs([]EA{{Name: string(make([]byte, 255))}}); err == nil {
		t.Error("EA name of 255 bytes accepted")
	}
}

func TestPAXTime(t *testing.T) {
	for s, want := range map[string]time.Time{
		"1620475200":            time.Unix(1620475200, 0),
		"1620475200.1234567":    time.Unix(1620475200, 123456700),
		"-1.5":                  time.Unix(-2, 5e8),
		"-11644473600":          time.Unix(-11644473600, 0), // 1601, FILETIME zero
		"0.0000000019":          time.Unix(0, 1),
		"1620475200.1234567891": time.Unix(1620475200, 123456789),
	} {
		got, err := parsePAXTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("parse %q = %v, %v; want %v", s, got, err, want)
		}
		if back, _ := parsePAXTime(formatPAXTime(want)); !back.Equal(want) {
			t.Errorf("format %v = %q, reads back as %v", want, formatPAXTime(want), back)
		}
	}
	if got := formatPAXTime(time.Unix(-2, 5e8)); got != "-1.5" {
		t.Errorf("format -1.5 = %q", got)
	}
	for _, bad := range []string{"", "-", "1.", ".5", "1.2.3", "1.x", "+1", "abc", "99999999999999999999"} {
		if _, err := parsePAXTime(bad); err == nil {
			t.Errorf("parse %q accepted", bad)
		}
	}
}
