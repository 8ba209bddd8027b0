package regf

import (
	"encoding/binary"
	"testing"
	"time"
)

func TestChecksumSpecialCases(t *testing.T) {
	b := make([]byte, 512)
	if got := checksum(b); got != 1 {
		t.Errorf("all-zero checksum = %#x, want 1", got)
	}
	binary.LittleEndian.PutUint32(b, 0xFFFFFFFF)
	if got := checksum(b); got != 0xFFFFFFFE {
		t.Errorf("0xFFFFFFFF checksum = %#x, want 0xFFFFFFFE", got)
	}
	binary.LittleEndian.PutUint32(b[4:], 0x0F0F0F0F)
	if got := checksum(b); got != 0xF0F0F0F0 {
		t.Errorf("checksum = %#x, want 0xF0F0F0F0", got)
	}
	binary.LittleEndian.PutUint32(b[508:], 0x12345678) // not part of the sum
	if got := checksum(b); got != 0xF0F0F0F0 {
		t.Errorf("checksum covers its own field")
	}
}

func TestNameHashAndOrder(t *testing.T) {
	// hash = hash*37 + upper-cased UTF-16 unit, as Windows computes it.
	want := uint32('A')*37*37 + uint32('B')*37 + uint32('C')
	if got := NameHash("abc"); got != want {
		t.Errorf("NameHash(abc) = %d, want %d", got, want)
	}
	if NameHash("Straße") != NameHash("STRAßE") {
		t.Errorf("hash must ignore case")
	}
	// Upper-case order: '_' (0x5F) sorts after 'Z' but before lower case
	// letters would in a case-sensitive sort.
	ordered := []string{"a", "B", "b1", "Z", "_x", "ä", "日"}
	for i := 1; i < len(ordered); i++ {
		if compareNames(ordered[i-1], ordered[i]) >= 0 {
			t.Errorf("%q should sort before %q", ordered[i-1], ordered[i])
		}
	}
	if !EqualNames("ÄBC", "äbc") {
		t.Errorf("EqualNames must fold non-ASCII Latin-1")
	}
}

func TestFiletimeRoundTrip(t *testing.T) {
	for _, ft := range []uint64{1, 116444736000000000, 133500000001234567, 1<<63 + 5} {
		if got := toFiletime(fromFiletime(ft)); got != ft {
			t.Errorf("filetime %d round-trips to %d", ft, got)
		}
	}
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.UTC)
	if got := fromFiletime(toFiletime(ts)); !got.Equal(ts) {
		t.Errorf("time %v round-trips to %v", ts, got)
	}
}

func TestNameEncoding(t *testing.T) {
	for _, tc := range []struct {
		name       string
		compressed bool
	}{{"plain", true}, {"ünï", true}, {"日本", false}, {"😀", false}} {
		b, comp := encodeName(tc.name)
		if comp != tc.compressed {
			t.Errorf("%q compressed = %v", tc.name, comp)
		}
		if got := decodeName(b, comp); got != tc.name {
			t.Errorf("%q decodes to %q", tc.name, got)
		}
	}
}
