package utf16le

import (
	"bytes"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"", "layervisor", "Ünïcödé", "😀 surrogate pair"} {
		if got := Decode(Encode(s)); got != s {
			t.Errorf("round trip of %q gave %q", s, got)
		}
	}
	if b := Encode("A😀"); !bytes.Equal(b, []byte{'A', 0, 0x3d, 0xd8, 0x00, 0xde}) {
		t.Errorf("Encode = % x", b)
	}
	if got := Decode([]byte{'h', 0, 'i', 0, 'x'}); got != "hi" {
		t.Errorf("odd trailing byte: %q", got)
	}
}
