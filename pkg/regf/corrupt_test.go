package regf_test

import (
	"encoding/binary"
	"errors"
	"math/rand"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/regf"
)

// small is a hive with a few keys and values of each storage kind, written
// by our writer; its layout is deterministic, so offsets below are stable.
func small(t testing.TB) []byte {
	h := regf.New()
	a, _ := h.CreateKey(`A`)
	a.SetValue("inline", regf.RegDWord, regf.DWordData(5))
	a.SetValue("cell", regf.RegSZ, regf.StringData("hello world"))
	a.SetValue("big", regf.RegBinary, make([]byte, 20000))
	h.CreateKey(`A\B`)
	h.CreateKey(`C`)
	return marshal(t, h)
}

// cellOf finds the file offset of the first cell whose data starts with sig.
func cellOf(t testing.TB, b []byte, sig string, nth int) int {
	t.Helper()
	for off := 4096 + 32; off+8 <= len(b); {
		size := int32(binary.LittleEndian.Uint32(b[off:]))
		if size == 0 {
			off = (off/4096 + 1) * 4096
			continue
		}
		if string(b[off+4:off+6]) == sig {
			if nth == 0 {
				return off
			}
			nth--
		}
		if string(b[off:off+4]) == "hbin" {
			off += 32
			continue
		}
		if size < 0 {
			size = -size
		}
		off += int(size)
	}
	t.Fatalf("no %q cell", sig)
	return 0
}

func wantFormatError(t *testing.T, b []byte, fix bool, msg string) {
	t.Helper()
	if fix {
		regf.FixChecksum(b)
	}
	_, err := regf.Parse(b)
	var fe *regf.FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("want a FormatError about %q, got %v", msg, err)
	}
	if !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), "offset 0x") {
		t.Errorf("error %q should mention %q and the offset", err, msg)
	}
}

func TestCorruptInputs(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		edit func(b []byte) []byte
		msg  string
	}{
		{"short file", func(b []byte) []byte { return b[:100] }, "shorter than"},
		{"bad signature", func(b []byte) []byte { copy(b, "regx"); return b }, "signature"},
		{"bad version", func(b []byte) []byte { le.PutUint32(b[20:], 2); return b }, "version"},
		{"log file", func(b []byte) []byte { le.PutUint32(b[28:], 1); return b }, "not a primary hive"},
		{"truncated bins", func(b []byte) []byte { return b[:len(b)-4096] }, "does not fit"},
		{"bad bin signature", func(b []byte) []byte { copy(b[4096:], "hbix"); return b }, "hive bin signature"},
		{"bin size past end", func(b []byte) []byte { le.PutUint32(b[4096+8:], 1<<20); return b }, "runs past"},
		{"root offset outside", func(b []byte) []byte { le.PutUint32(b[36:], 0x7ffffff8); return b }, "outside"},
		{"root offset unaligned", func(b []byte) []byte { le.PutUint32(b[36:], 0x21); return b }, "aligned"},
		{"root not a key", func(b []byte) []byte {
			copy(b[cellOf(t, b, "nk", 0)+4:], "xx")
			return b
		}, "not a key node"},
		{"free cell referenced", func(b []byte) []byte {
			off := cellOf(t, b, "nk", 0)
			le.PutUint32(b[off:], -le.Uint32(b[off:]))
			return b
		}, "not allocated"},
		{"cell past its bin", func(b []byte) []byte {
			off := cellOf(t, b, "nk", 0)
			le.PutUint32(b[off:], 0xFFF00000) // -1 MiB
			return b
		}, "runs past its hive bin"},
		{"key name past cell", func(b []byte) []byte {
			off := cellOf(t, b, "nk", 1)
			le.PutUint16(b[off+4+72:], 5000)
			return b
		}, "key name length"},
		{"subkey list loops to the root", func(b []byte) []byte {
			lh := cellOf(t, b, "lh", 0) // the list of a key below the root
			le.PutUint32(b[lh+8:], le.Uint32(b[36:]))
			return b
		}, "referenced twice"},
		{"subkey list count past cell", func(b []byte) []byte {
			lh := cellOf(t, b, "lh", 0)
			le.PutUint16(b[lh+6:], 60000)
			return b
		}, "runs past the cell"},
		{"bad subkey list signature", func(b []byte) []byte {
			copy(b[cellOf(t, b, "lh", 0)+4:], "zz")
			return b
		}, "subkey list signature"},
		{"value list count too large", func(b []byte) []byte {
			off := cellOf(t, b, "nk", 1) // key A
			le.PutUint32(b[off+4+36:], 100000)
			return b
		}, "value list"},
		{"inline data too long", func(b []byte) []byte {
			off := cellOf(t, b, "vk", 0)
			le.PutUint32(b[off+4+4:], 0x80000008)
			return b
		}, "inline value data"},
		{"value data past cell", func(b []byte) []byte {
			off := cellOf(t, b, "vk", 1)
			le.PutUint32(b[off+4+4:], 4000)
			return b
		}, "runs past"},
		{"big data segments missing", func(b []byte) []byte {
			off := cellOf(t, b, "db", 0)
			le.PutUint16(b[off+6:], 1)
			return b
		}, "segments"},
		{"security past cell", func(b []byte) []byte {
			off := cellOf(t, b, "sk", 0)
			le.PutUint32(b[off+4+16:], 1<<30)
			return b
		}, "security descriptor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantFormatError(t, tc.edit(small(t)), true, tc.msg)
		})
	}
}

func TestBadChecksum(t *testing.T) {
	b := small(t)
	b[100] ^= 1
	wantFormatError(t, b, false, "checksum")
}

// TestIndexRootCycle makes an ri list point at itself.
func TestIndexRootCycle(t *testing.T) {
	h := regf.New()
	for i := 0; i < 1100; i++ {
		h.Root.CreateSubkey(strings.Repeat("k", 1+i%50) + string(rune('a'+i/50)))
	}
	b := marshal(t, h)
	ri := cellOf(t, b, "ri", 0)
	binary.LittleEndian.PutUint32(b[ri+8:], uint32(ri-4096))
	wantFormatError(t, b, true, "referenced twice")
}

// TestRandomCorruption flips bytes of a valid hive: the parser may accept
// or reject, but must not panic or hang, and what it accepts must write.
func TestRandomCorruption(t *testing.T) {
	orig := small(t)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 3000; i++ {
		b := append([]byte(nil), orig...)
		for j := 0; j < 1+rng.Intn(8); j++ {
			b[4096+rng.Intn(len(b)-4096)] = byte(rng.Intn(256))
		}
		if rng.Intn(10) == 0 {
			b = b[:rng.Intn(len(b))]
		}
		regf.FixChecksum(b)
		if h, err := regf.Parse(b); err == nil {
			if _, err := h.Marshal(); err != nil {
				t.Logf("accepted hive does not marshal: %v", err)
			}
		}
	}
}

// TestUnsortedIndexLeaf rewrites the root's lh list as an li list in
// reverse order: the keys still come back in Windows order.
func TestUnsortedIndexLeaf(t *testing.T) {
	h := regf.New()
	for _, n := range []string{"B", "a", "C"} {
		h.Root.CreateSubkey(n)
	}
	b := marshal(t, h)
	le := binary.LittleEndian
	lh := cellOf(t, b, "lh", 0)
	offs := []uint32{le.Uint32(b[lh+8:]), le.Uint32(b[lh+16:]), le.Uint32(b[lh+24:])}
	copy(b[lh+4:], "li")
	for i, o := range []uint32{offs[2], offs[0], offs[1]} {
		le.PutUint32(b[lh+8+4*i:], o)
	}
	got := parse(t, b)
	var names []string
	for _, k := range got.Root.Subkeys() {
		names = append(names, k.Name())
	}
	if strings.Join(names, ",") != "a,B,C" {
		t.Errorf("order %v", names)
	}
	// Two keys whose names differ only in case are one name too many.
	nk := cellOf(t, b, "nk", 2) // "B" (after the root and "a")
	b[nk+4+76] = 'A'
	wantFormatError(t, b, true, "two subkeys named")
}
