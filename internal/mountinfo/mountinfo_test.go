//go:build linux

package mountinfo

import "testing"

func TestReadHasRoot(t *testing.T) {
	set, err := Mountpoints()
	if err != nil {
		t.Fatal(err)
	}
	if !set["/"] || !set["/proc"] {
		t.Fatalf("/ or /proc missing from mount table: %v", set)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b\134c`); got != `/a b\c` {
		t.Fatalf("unescape: %q", got)
	}
	if got := unescape(`/x\04`); got != `/x\04` {
		t.Fatalf("short escape changed: %q", got)
	}
}
