package winguid

import (
	"encoding/json"
	"testing"
)

func TestRoundTripAndLayout(t *testing.T) {
	const s = "763e9fea-502d-434f-aad9-5fabe9c91a7b"
	g, err := Parse("{" + s + "}")
	if err != nil {
		t.Fatal(err)
	}
	// Windows layout: Data1..3 little-endian, Data4 as written.
	want := GUID{0xea, 0x9f, 0x3e, 0x76, 0x2d, 0x50, 0x4f, 0x43, 0xaa, 0xd9, 0x5f, 0xab, 0xe9, 0xc9, 0x1a, 0x7b}
	if g != want || g.String() != s {
		t.Fatalf("Parse: % x, %s", g[:], g)
	}
	if b, _ := json.Marshal(g); string(b) != `"`+s+`"` {
		t.Errorf("JSON %s", b)
	}
	for _, bad := range []string{"", "763e9fea502d434faad95fabe9c91a7b", "zz3e9fea-502d-434f-aad9-5fabe9c91a7b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	n := New()
	if n.IsZero() || n[7]>>4 != 4 || n[8]>>6 != 2 || New() == n {
		t.Errorf("New: %s", n)
	}
}
