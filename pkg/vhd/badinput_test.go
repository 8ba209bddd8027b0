package vhd

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/memfile"
)

// sampleDynamic returns the bytes of a 4 MiB dynamic VHD with 512 KiB
// blocks whose block 2 holds data.
func sampleDynamic(t testing.TB) []byte {
	t.Helper()
	m := &memfile.File{}
	if err := formatDynamic(m, 4<<20, DynamicOptions{BlockSize: 512 << 10}); err != nil {
		t.Fatal(err)
	}
	d, err := openMem(m, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte("data"), 25000), 1<<20); err != nil {
		t.Fatal(err)
	}
	d.Close()
	return m.B
}

const sampleBAT = FooterSize + dynHeaderSize

func setBAT(b []byte, i int, sector uint32) []byte {
	binary.BigEndian.PutUint32(b[sampleBAT+4*i:], sector)
	return b
}

// Damaged files are refused with an error naming the file and the damage,
// by OpenDynamic, OpenDynamicRW and CheckFile alike; none panics.
func TestDynamicBadInput(t *testing.T) {
	good := sampleDynamic(t)
	block2 := binary.BigEndian.Uint32(good[sampleBAT+8:])
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"header-checksum", mutate(func(b []byte) []byte { b[FooterSize+100]++; return b }), "dynamic header checksum"},
		{"header-cookie", mutate(func(b []byte) []byte { b[FooterSize] = 'X'; return b }), "cookie"},
		{"bat-past-eof", mutate(func(b []byte) []byte { return setBAT(b, 3, uint32(len(b)/512+10)) }), "past the end of the file"},
		{"bat-into-header", mutate(func(b []byte) []byte { return setBAT(b, 3, 1) }), "overlaps"},
		{"bat-shared-block", mutate(func(b []byte) []byte { return setBAT(b, 3, block2) }), "overlaps"},
		{"truncated-in-block", good[:len(good)-100000], "past the end of the file"},
		{"truncated-in-bat", good[:sampleBAT+10], "outside the"},
		{"truncated-in-header", good[:FooterSize+100], "outside the"},
		{"no-footer", mutate(func(b []byte) []byte { clear(b[:8]); clear(b[len(b)-FooterSize:]); return b }), "conectix"},
		{"differencing", mutate(func(b []byte) []byte {
			for _, off := range []int{0, len(b) - FooterSize} {
				binary.BigEndian.PutUint32(b[off+60:], DiskTypeDifferencing)
				binary.BigEndian.PutUint32(b[off+64:], checksum(b[off:off+FooterSize]))
			}
			return b
		}), "differencing"},
	} {
		p := filepath.Join(t.TempDir(), tc.name+".vhd")
		if err := os.WriteFile(p, tc.file, 0o600); err != nil {
			t.Fatal(err)
		}
		for what, open := range map[string]func(string) (*Dynamic, error){"OpenDynamic": OpenDynamic, "OpenDynamicRW": OpenDynamicRW} {
			d, err := open(p)
			if err == nil {
				d.Close()
			}
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s %s: %v, want an error naming the file and %q", what, tc.name, err, tc.want)
			}
		}
		if err := CheckFile(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("CheckFile %s: %v", tc.name, err)
		}
	}
}

// A damaged tail footer (the copy at 0 is good) and space a crash left
// after the last block: the file reads as before, and the first write puts
// a good footer right after the used space.
func TestDynamicRecoversTail(t *testing.T) {
	good := sampleDynamic(t)
	want := make([]byte, 4<<20)
	copy(want[1<<20:], bytes.Repeat([]byte("data"), 25000))
	orphan := append(bytes.Repeat([]byte{0xEE}, 512+512<<10), good[len(good)-FooterSize:]...)
	for name, file := range map[string][]byte{
		"bad-tail": append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]+1),
		"leaked":   append(bytes.Clone(good[:len(good)-FooterSize]), orphan...),
		"no-tail":  good[:len(good)-FooterSize],
	} {
		p := filepath.Join(t.TempDir(), name+".vhd")
		os.WriteFile(p, file, 0o600)
		d, err := OpenDynamicRW(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(readAll(t, d), want) {
			t.Errorf("%s: reads differently", name)
		}
		if _, err := d.WriteAt([]byte("new"), 3<<20); err != nil {
			t.Fatal(err)
		}
		copy(want[3<<20:], "new")
		d.Close()
		if err := CheckFile(p); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if st, _ := os.Stat(p); st.Size() != int64(len(good)+512+512<<10) {
			t.Errorf("%s: file of %d bytes, want the used space and a footer, %d", name, st.Size(), len(good)+512+512<<10)
		}
		if !bytes.Equal(qemuRead(t, p), want) {
			t.Errorf("%s: QEMU reads differently", name)
		}
		copy(want[3<<20:], "\x00\x00\x00")
	}
}

// Every prefix of the writes a session makes (the process killed at any
// point; the footer stays last) and every page-wise mix of the writes since
// the last flush (a power loss) leaves a file that opens, in which every
// sector holds one of the contents it had at some point (never garbage),
// and that takes new writes. After Close everything written is there.
func TestDynamicCrashConsistency(t *testing.T) {
	const size = 4<<20 + 5*512 // 9 blocks, most allocated while recording
	base := &memfile.File{}
	if err := formatDynamic(base, size, DynamicOptions{BlockSize: 512 << 10}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	mirror := make([]byte, size)
	d, _ := openMem(base, true)
	writeRandom(t, rng, d, mirror, 1, 100<<10)
	rec := &memfile.Recorder{File: memfile.File{B: bytes.Clone(base.B)}}
	if d, err := openMem(rec, true); err != nil {
		t.Fatal(err)
	} else {
		seen := make([]map[[32]byte]bool, size/512) // every content of every sector
		record := func() {
			for s := range seen {
				if seen[s] == nil {
					seen[s] = map[[32]byte]bool{}
				}
				seen[s][sha256.Sum256(mirror[s*512:(s+1)*512])] = true
			}
		}
		record()
		for i := range 16 {
			writeRandom(t, rng, d, mirror, 1, 100<<10)
			record()
			if i == 8 {
				d.Sync()
			}
		}
		d.Close()
		verify := func(what string, m *memfile.File) {
			t.Helper()
			c, err := openMem(m, true)
			if err != nil {
				t.Fatalf("%s: the file does not open: %v", what, err)
			}
			got := readAll(t, c)
			for s := range seen {
				if !seen[s][sha256.Sum256(got[s*512:(s+1)*512])] {
					t.Fatalf("%s: sector %d holds content it never had", what, s)
				}
			}
			off := rng.Int64N(size - 1000)
			if _, err := c.WriteAt(bytes.Repeat([]byte{0x3c}, 1000), off); err != nil {
				t.Fatalf("%s: write after the crash: %v", what, err)
			}
			copy(got[off:], bytes.Repeat([]byte{0x3c}, 1000))
			if c, err := openMem(m, false); err != nil || !bytes.Equal(readAll(t, c), got) {
				t.Fatalf("%s: a write after the crash did not land (%v)", what, err)
			}
		}
		ops := rec.Ops
		for k := 0; k <= len(ops); k++ {
			m := &memfile.File{B: bytes.Clone(base.B)}
			for _, op := range ops[:k] {
				op.Apply(m)
			}
			// A process crash never leaves the file without its footer last,
			// which readers that look only there (Windows) need.
			if _, err := ReadFooter(m, int64(len(m.B))); err != nil {
				t.Fatalf("crash after %d of %d writes: %v", k, len(ops), err)
			}
			verify(fmt.Sprintf("crash after %d of %d writes", k, len(ops)), m)
		}
		for cut := 0; cut <= len(ops); cut++ {
			lastSync := 0
			for i, op := range ops[:cut] {
				if op.Sync {
					lastSync = i + 1
				}
			}
			for trial := range 4 {
				m := memfile.PowerLoss(rng, base.B, ops, lastSync, cut)
				verify(fmt.Sprintf("power loss %d at op %d (synced up to %d)", trial, cut, lastSync), m)
			}
		}
		final := &memfile.File{B: bytes.Clone(base.B)}
		for _, op := range ops {
			op.Apply(final)
		}
		if c, err := openMem(final, false); err != nil || !bytes.Equal(readAll(t, c), mirror) {
			t.Fatalf("after Close the file does not hold every write (%v)", err)
		}
	}
}
