package wintar

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Each limit of the checker stops a layer once crossed (lowered here so
// the layers stay small), whatever kind of entry crosses it.
func TestCheckerLimits(t *testing.T) {
	dir := func(p string) *Entry { return &Entry{Path: p, Kind: KindDir, Attributes: AttrDirectory} }
	file := func(p string) *Entry { return &Entry{Path: p, Kind: KindFile} }
	for _, tc := range []struct {
		limit string
		lim   limits
		entry func(i int) *Entry
	}{
		{"MaxEntries", limits{entries: 50, nodes: 1 << 20, held: 1 << 30}, func(i int) *Entry { return file(fmt.Sprintf("Files/f%d", i)) }},
		{"MaxTreeNodes", limits{entries: 1 << 20, nodes: 50, held: 1 << 30}, func(i int) *Entry { return file(fmt.Sprintf("Files/d%d/f", i)) }},
		{"MaxTreeNodes", limits{entries: 1 << 20, nodes: 50, held: 1 << 30}, func(i int) *Entry {
			return &Entry{Path: "Files/f", Stream: fmt.Sprintf("s%d", i), Kind: KindStream}
		}},
		{"MaxTreeNodes", limits{entries: 1 << 20, nodes: 50, held: 1 << 30}, func(i int) *Entry {
			return &Entry{Path: fmt.Sprintf("Files/gone%d", i), Kind: KindWhiteout}
		}},
		{"MaxNameBytes", limits{entries: 1 << 20, nodes: 1 << 20, held: 2000}, func(i int) *Entry { return file(fmt.Sprintf("Files/%s%d", strings.Repeat("n", 40), i)) }},
	} {
		c := newChecker()
		c.lim = tc.lim
		for _, e := range []*Entry{dir("Files"), file("Files/f")} {
			if err := c.check(e); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			err = c.check(tc.entry(i))
		}
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "wintar."+tc.limit) {
			t.Errorf("%s: want the limit, got %v", tc.limit, err)
		}
	}
}

// Checking a deep entry costs its length: the checker looks each
// component up once, and keeps one copy of each new component, not of
// every prefix of the name.
func TestCheckerDeepNames(t *testing.T) {
	c := newChecker()
	deep := "Files/" + strings.Repeat("a/", 10000) + "f"
	if err := c.check(&Entry{Path: "Files", Kind: KindDir, Attributes: AttrDirectory}); err != nil {
		t.Fatal(err)
	}
	if err := c.check(&Entry{Path: deep, Kind: KindFile}); err != nil {
		t.Fatal(err)
	}
	// The name once, and one byte per new component ("a", "f").
	if want := int64(len("Files") + len(deep) + len("Files") + 10001); c.held != want {
		t.Errorf("checker holds %d bytes for a %d-byte name, want %d", c.held, len(deep), want)
	}
	err := c.check(&Entry{Path: deep + "/x", Kind: KindFile})
	if err == nil || !strings.Contains(err.Error(), "is a file, not a directory") {
		t.Errorf("entry under a file: %v", err)
	}
}
