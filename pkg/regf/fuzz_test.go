package regf_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/internal/regftest"
)

// hiveFromBins wraps fuzz input in a valid base block so the fuzzer spends
// its time on cells: the first byte picks layered (bit 0) and version 1.3
// (bit 1), the rest is the hive bins, zero-padded to whole bins.
func hiveFromBins(in []byte) []byte {
	var flags byte
	if len(in) > 0 {
		flags, in = in[0], in[1:]
	}
	bins := (len(in) + 4095) &^ 4095
	if bins == 0 {
		bins = 4096
	}
	b := make([]byte, 4096+bins)
	copy(b[4096:], in)
	le := binary.LittleEndian
	copy(b, "regf")
	le.PutUint32(b[4:], 1)
	le.PutUint32(b[8:], 1)
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[24:], 5)
	if flags&2 != 0 {
		le.PutUint32(b[24:], 3)
	}
	if flags&1 != 0 {
		le.PutUint32(b[24:], 6)
		le.PutUint32(b[144:], 2)
	}
	le.PutUint32(b[32:], 1)
	le.PutUint32(b[36:], 0x20)
	le.PutUint32(b[40:], uint32(bins))
	regf.FixChecksum(b)
	return b
}

// binsOf turns one of our hives back into fuzz input for hiveFromBins.
func binsOf(b []byte, flags byte) []byte {
	// Trailing zeros come back as padding: keep the seed small.
	return append([]byte{flags}, bytes.TrimRight(b[4096:], "\x00")...)
}

// FuzzParse feeds arbitrary cells to Parse. It must never panic or hang;
// whatever parses must marshal, and the result must parse back to the same
// tree.
func FuzzParse(f *testing.F) {
	plain := regf.New()
	a, _ := plain.CreateKey(`A\B`)
	a.Class = "cls"
	a.SetValue("", regf.RegSZ, regf.StringData("x"))
	a.SetValue("d", regf.RegDWord, regf.DWordData(5))
	a.SetValue("ü", regf.RegBinary, make([]byte, 40))
	plain.CreateKey(`日`)
	f.Add(binsOf(marshal(f, plain), 0))
	delta := regf.New()
	delta.Layered = true
	k, _ := delta.CreateKey(`X\Y`)
	k.Layer = regf.LayerSupersedeLocal
	k.InheritClass = true
	k.SetTombstone("gone")
	f.Add(binsOf(marshal(f, delta), 1))
	big := regf.New()
	big.Root.SetValue("big", regf.RegBinary, make([]byte, 16400))
	f.Add(binsOf(marshal(f, big), 0))
	f.Fuzz(func(t *testing.T, in []byte) {
		checkParse(t, hiveFromBins(in))
	})
}

// FuzzParseFile fuzzes whole files, base block included (checksum fixed).
func FuzzParseFile(f *testing.F) {
	f.Add(marshal(f, regf.New()))
	f.Fuzz(func(t *testing.T, b []byte) {
		regf.FixChecksum(b)
		checkParse(t, b)
	})
}

func checkParse(t *testing.T, b []byte) {
	h, err := regf.Parse(b)
	if err != nil {
		return
	}
	out, err := h.Marshal()
	if err != nil {
		return // e.g. names too long to write back
	}
	if err := regf.VerifyLayout(out); err != nil {
		t.Fatalf("our output fails the layout check: %v", err)
	}
	h2, err := regf.Parse(out)
	if err != nil {
		t.Fatalf("our own output does not parse: %v", err)
	}
	if d := regftest.Differences(regftest.FlattenMeta(h.Root), regftest.FlattenMeta(h2.Root), 3); len(d) > 0 {
		t.Fatalf("round trip changed the tree: %v", d)
	}
}
