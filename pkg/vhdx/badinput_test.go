package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/memfile"
	"github.com/layervisor/layervisor/internal/testutil"
)

// sample returns the bytes of a small dynamic disk with a few blocks.
func sample(t testing.TB, typ Type) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.vhdx")
	d, err := Create(path, CreateOptions{Size: 8 * mib, Type: typ})
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 3; i++ {
		if _, err := d.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), i*2*mib); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openBytes(b []byte, ro bool) (*Disk, error) {
	return OpenFile(&memfile.File{B: b}, "test.vhdx", OpenOptions{ReadOnly: ro, NoParent: true})
}

// rewriteHeaders re-encodes both headers after edit, with valid CRCs.
func rewriteHeaders(t testing.TB, b []byte, edit func(*header)) {
	for _, off := range []int64{header1Offset, header2Offset} {
		h, err := decodeHeader(b[off : off+headerSize])
		if err != nil {
			t.Fatal(err)
		}
		edit(h)
		copy(b[off:], h.encode())
	}
}

// rewriteRegions edits both region tables and re-encodes them.
func rewriteRegions(t testing.TB, b []byte, edit func([]region) []region) {
	rs, err := decodeRegionTable(b[region1Offset : region1Offset+regionTblSize])
	if err != nil {
		t.Fatal(err)
	}
	tbl := encodeRegionTable(edit(rs))
	copy(b[region1Offset:], tbl)
	copy(b[region2Offset:], tbl)
}

func batOf(t testing.TB, b []byte) int64 {
	rs, err := decodeRegionTable(b[region1Offset : region1Offset+regionTblSize])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.guid == regionBAT {
			return r.offset
		}
	}
	t.Fatal("no BAT")
	return 0
}

func TestBadInput(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, b []byte) []byte
		want string
	}{
		{"empty", func(t *testing.T, b []byte) []byte { return nil }, "too short"},
		{"not vhdx", func(t *testing.T, b []byte) []byte { copy(b, "NOTVHDX!"); return b }, "not a VHDX"},
		{"truncated in headers", func(t *testing.T, b []byte) []byte { return b[:100*kib] }, "too short"},
		{"truncated before blocks", func(t *testing.T, b []byte) []byte { return b[:3*mib+mib/2] }, "past the end"},
		{"both headers bad signature", func(t *testing.T, b []byte) []byte {
			copy(b[header1Offset:], "HEAD")
			copy(b[header2Offset:], "HEAD")
			return b
		}, "both headers are invalid"},
		{"both header CRCs wrong", func(t *testing.T, b []byte) []byte {
			b[header1Offset+100]++
			b[header2Offset+100]++
			return b
		}, "CRC-32C"},
		{"both region table CRCs wrong", func(t *testing.T, b []byte) []byte {
			b[region1Offset+1000]++
			b[region2Offset+1000]++
			return b
		}, "CRC-32C"},
		{"unknown required region", func(t *testing.T, b []byte) []byte {
			rewriteRegions(t, b, func(rs []region) []region {
				return append(rs, region{guid: NewGUID(), offset: 64 * mib, length: mib, required: true})
			})
			return b
		}, "unknown required region"},
		{"regions overlap", func(t *testing.T, b []byte) []byte {
			rewriteRegions(t, b, func(rs []region) []region {
				for i := range rs {
					if rs[i].guid == regionMetadata {
						rs[i].offset = batOf(t, b)
					}
				}
				return rs
			})
			return b
		}, "overlaps"},
		{"unknown required metadata", func(t *testing.T, b []byte) []byte {
			const meta = 2 * mib
			n := le.Uint16(b[meta+10:])
			e := b[meta+32+32*int(n):]
			id := NewGUID()
			copy(e, id[:])
			le.PutUint32(e[16:], metaTableSize+4096)
			le.PutUint32(e[20:], 8)
			le.PutUint32(e[24:], 4)
			le.PutUint16(b[meta+10:], n+1)
			return b
		}, "unknown required metadata"},
		{"metadata item outside region", func(t *testing.T, b []byte) []byte {
			le.PutUint32(b[2*mib+32+16:], 2*mib)
			return b
		}, "outside the metadata region"},
		{"bad block size", func(t *testing.T, b []byte) []byte {
			le.PutUint32(b[2*mib+metaTableSize:], 3*mib)
			return b
		}, "block size"},
		{"BAT entry past the end", func(t *testing.T, b []byte) []byte {
			le.PutUint64(b[batOf(t, b):], batEntry(blockFullyPresent, 1<<40))
			return b
		}, "past the end"},
		{"BAT entries overlap", func(t *testing.T, b []byte) []byte {
			bat := batOf(t, b)
			copy(b[bat+8*2:bat+8*3], b[bat:bat+8])
			return b
		}, "overlaps"},
		{"BAT entry in the header area", func(t *testing.T, b []byte) []byte {
			le.PutUint64(b[batOf(t, b):], batEntry(blockFullyPresent, 0))
			return b
		}, "header area"},
		{"BAT entry over metadata", func(t *testing.T, b []byte) []byte {
			le.PutUint64(b[batOf(t, b):], batEntry(blockFullyPresent, 2*mib))
			return b
		}, "overlaps"},
		{"bad BAT state", func(t *testing.T, b []byte) []byte {
			le.PutUint64(b[batOf(t, b):], 5)
			return b
		}, "bad payload block state"},
		{"partially present without parent", func(t *testing.T, b []byte) []byte {
			bat := batOf(t, b)
			le.PutUint64(b[bat:], le.Uint64(b[bat:])|blockPartiallyPresent)
			return b
		}, "bad payload block state"},
		{"log does not fit", func(t *testing.T, b []byte) []byte {
			rewriteHeaders(t, b, func(h *header) { h.logGUID = NewGUID(); h.logLength = 64 * mib })
			return b
		}, "log at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.edit(t, sample(t, Dynamic))
			d, err := openBytes(b, true)
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "test.vhdx") {
				t.Fatalf("error %q does not say %q and name the file", err, tc.want)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v is not ErrCorrupt", err)
			}
		})
	}
}

// One damaged header or region table is survivable: the other copy is used.
func TestOneDamagedCopyIsSurvivable(t *testing.T) {
	for _, off := range []int64{header1Offset, header2Offset, region1Offset, region2Offset} {
		b := sample(t, Dynamic)
		b[off+40]++
		d, err := openBytes(b, true)
		if err != nil {
			t.Fatalf("damage at %d KiB: %v", off/kib, err)
		}
		got := make([]byte, 4096)
		d.ReadAt(got, 2*mib)
		if !bytes.Equal(got, bytes.Repeat([]byte{2}, 4096)) {
			t.Errorf("damage at %d KiB: wrong data", off/kib)
		}
		d.Close()
	}
}

// The log of a file QEMU was writing (its entry, its format) is replayed
// when we open the file for writing, and refused read-only.
func TestLogReplay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.vhdx")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "vhdx", path, "16M")
	testutil.Run(t, "qemu-io", "-f", "vhdx", "-c", "write -P 0xab 0 64k", path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := decodeHeader(b[header1Offset:])
	if err != nil {
		t.Fatal(err)
	}
	// QEMU applied its entry and cleared the header's log GUID on close;
	// the entry is still in the log. Undo what it applied (the BAT sector
	// it describes) and point the header at the log again, as a crash
	// between the log write and its application would have left it.
	log := b[h.logOffset : h.logOffset+uint64(h.logLength)]
	var guid GUID
	copy(guid[:], log[32:48])
	seq := activeSequence(log, guid)
	if len(seq) == 0 {
		t.Fatal("no log entry from QEMU to replay")
	}
	for _, e := range seq {
		for _, ds := range e.descs {
			clear(b[ds.fileOff : ds.fileOff+4096])
		}
	}
	rewriteHeaders(t, b, func(h *header) { h.logGUID = guid })
	writeFile(t, path, b)

	if _, err := Open(path, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrLogNeedsReplay) {
		t.Fatalf("read-only open of a file with a pending log: %v", err)
	}
	rep, err := Check(path, false)
	if err != nil || rep.OK() {
		t.Fatalf("check without repair: %+v, %v", rep, err)
	}
	rep, err = Check(path, true)
	if err != nil || !rep.OK() || !rep.Info.LogReplayed {
		t.Fatalf("check --repair: %+v, %v", rep, err)
	}
	d, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64*kib)
	d.ReadAt(got, 0)
	d.Close()
	if !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 64*kib)) {
		t.Fatal("after replay the written data is not visible")
	}
	testutil.Run(t, "qemu-img", "check", "-f", "vhdx", path)
	out := string(testutil.Run(t, "qemu-io", "-f", "vhdx", "-r", "-c", "read -P 0xab 0 64k", path))
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("QEMU reads other data after our replay:\n%s", out)
	}
}

// Every prefix of the writes a session makes (a process killed at any
// point) and every subset of the writes since the last flush (a power
// loss) leaves a file that opens, in which every sector holds one of the
// contents it had at some point: never garbage, never zeros it never held.
func TestCrashConsistency(t *testing.T) {
	for _, typ := range []Type{Dynamic, Differencing} {
		t.Run(string(typ), func(t *testing.T) {
			dir := t.TempDir()
			const size = 4 * mib
			parentPath := filepath.Join(dir, "p.vhdx")
			p, err := Create(parentPath, CreateOptions{Size: size})
			if err != nil {
				t.Fatal(err)
			}
			initial := make([]byte, size)
			rng := rand.New(rand.NewPCG(3, 4))
			writeRandom(t, rng, p, initial, 10, 100*1024, false)
			p.Close()
			path := parentPath
			if typ == Differencing {
				path = filepath.Join(dir, "c.vhdx")
				c, err := Create(path, CreateOptions{Parent: parentPath})
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			base, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			rec := &memfile.Recorder{File: memfile.File{B: bytes.Clone(base)}}
			d, err := OpenFile(rec, path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			d.growStep = 2 * mib // small files keep the replays cheap
			// Versions of every sector: the initial content and after each call.
			versions := map[int64]map[string]bool{}
			mirror := bytes.Clone(initial)
			record := func() {
				for s := int64(0); s < size/512; s++ {
					if versions[s] == nil {
						versions[s] = map[string]bool{}
					}
					versions[s][string(mirror[s*512:(s+1)*512])] = true
				}
			}
			record()
			for i := 0; i < 12; i++ {
				writeRandom(t, rng, d, mirror, 1, 200*1024, false)
				record()
				if i == 5 {
					if err := d.Sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			verify := func(what string, m *memfile.File) {
				t.Helper()
				c, err := OpenFile(m, path, OpenOptions{ReadOnly: true, ParentPath: map[bool]string{true: parentPath}[typ == Differencing]})
				if err != nil {
					t.Fatalf("%s: file does not open: %v", what, err)
				}
				defer c.Close()
				got := make([]byte, size)
				if _, err := c.ReadAt(got, 0); err != nil {
					t.Fatalf("%s: read: %v", what, err)
				}
				for s := int64(0); s < size/512; s++ {
					if !versions[s][string(got[s*512:(s+1)*512])] {
						t.Fatalf("%s: sector %d holds content it never had", what, s)
					}
				}
			}
			ops := rec.Ops
			m := &memfile.File{B: bytes.Clone(base)}
			for k := 0; k <= len(ops); k++ { // process crash after op k
				verify(fmt.Sprintf("crash after %d of %d writes", k, len(ops)), m)
				if k < len(ops) {
					ops[k].Apply(m)
				}
			}
			// Power loss: the page cache writes each 4 KiB page back at some
			// moment of its own after the last sync, and the file length at
			// another; so every page holds its content as of a random time
			// between the last sync and the loss.
			var beforeSync []int // the riskiest moments: just before a flush
			for i, op := range ops {
				if op.Sync {
					beforeSync = append(beforeSync, i)
				}
			}
			for trial := 0; trial < len(ops)+40; trial++ {
				cut := trial // every point once, then 40 random moments before a flush
				if trial >= len(ops) {
					cut = beforeSync[rng.IntN(len(beforeSync))]
				}
				lastSync := 0
				for i, op := range ops[:cut] {
					if op.Sync {
						lastSync = i + 1
					}
				}
				verify(fmt.Sprintf("power loss at op %d (synced up to %d)", cut, lastSync), memfile.PowerLoss(rng, base, ops, lastSync, cut))
			}
			// After Close, everything written is there.
			final := &memfile.File{B: bytes.Clone(base)}
			for _, op := range ops {
				op.Apply(final)
			}
			c, err := OpenFile(final, path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := make([]byte, size)
			c.ReadAt(got, 0)
			if !bytes.Equal(got, mirror) {
				t.Fatal("after Close the file does not hold every write")
			}
		})
	}
}
