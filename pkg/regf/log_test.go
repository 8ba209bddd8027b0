package regf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// These tests build transaction logs as the regf specification describes
// them (no real Windows logs are available here): a dirty primary holding
// the old state, logs holding the pages of the new one.

func hiveBytes(t *testing.T, h *Hive) []byte {
	t.Helper()
	b, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// twoStates returns an old and a new image of one hive; the new one has
// more bins.
func twoStates(t *testing.T) (old, new []byte, want *Hive) {
	h := New()
	k, _ := h.CreateKey(`Software\App`)
	k.SetValue("v", RegDWord, DWordData(1))
	old = hiveBytes(t, h)
	for i := 0; i < 200; i++ {
		c, _ := h.CreateKey(fmt.Sprintf(`Software\App\Sub%03d`, i))
		c.SetValue("data", RegBinary, bytes.Repeat([]byte{byte(i)}, 100))
	}
	k.SetValue("v", RegDWord, DWordData(2))
	new = hiveBytes(t, h)
	return old, new, h
}

// dirtyPrimary marks the old image as mid-write: primary sequence ahead.
func dirtyPrimary(old []byte, seq uint32) []byte {
	b := append([]byte(nil), old...)
	le.PutUint32(b[4:], seq+1)
	le.PutUint32(b[8:], seq)
	FixChecksum(b)
	return b
}

func logBase(primary []byte, typ uint32, seq uint32) []byte {
	l := make([]byte, logSector)
	copy(l, primary[:logSector])
	le.PutUint32(l[4:], seq)
	le.PutUint32(l[8:], seq)
	le.PutUint32(l[28:], typ)
	FixChecksum(l)
	return l
}

// changedPages lists the 4096-byte pages of new's bins that differ from old.
func changedPages(old, new []byte) []int {
	var pages []int
	for off := 0; off < len(new)-baseBlockSize; off += binAlign {
		o, n := old[baseBlockSize:], new[baseBlockSize:]
		if off+binAlign > len(o) || !bytes.Equal(o[off:off+binAlign], n[off:off+binAlign]) {
			pages = append(pages, off)
		}
	}
	return pages
}

func logEntryBytes(seq uint32, binsSize int, bins []byte, pages []int) []byte {
	var refs, data []byte
	for _, p := range pages {
		refs = le.AppendUint32(refs, uint32(p))
		refs = le.AppendUint32(refs, binAlign)
		data = append(data, bins[p:p+binAlign]...)
	}
	size := (logEntryHeader + len(refs) + len(data) + logSector - 1) / logSector * logSector
	e := make([]byte, size)
	copy(e, "HvLE")
	le.PutUint32(e[4:], uint32(size))
	le.PutUint32(e[12:], seq)
	le.PutUint32(e[16:], uint32(binsSize))
	le.PutUint32(e[20:], uint32(len(pages)))
	copy(e[logEntryHeader:], refs)
	copy(e[logEntryHeader+len(refs):], data)
	le.PutUint64(e[24:], marvin32(logSeed, e[logEntryHeader:]))
	le.PutUint64(e[32:], marvin32(logSeed, e[:32]))
	return e
}

func TestRecoverNewFormat(t *testing.T) {
	old, new, want := twoStates(t)
	primary := dirtyPrimary(old, 5)
	bins := new[baseBlockSize:]
	pages := changedPages(old, new)
	if len(pages) < 2 {
		t.Fatalf("test needs several changed pages, got %d", len(pages))
	}
	half := len(pages) / 2
	stale := logEntryBytes(3, len(old)-baseBlockSize, bytes.Repeat([]byte{0xEE}, len(old)), []int{0})
	log1 := append(logBase(primary, logTypeNew, 5), stale...)
	log1 = append(log1, logEntryBytes(5, len(bins), bins, pages[:half])...)
	log2 := append(logBase(primary, logTypeNew, 6), logEntryBytes(6, len(bins), bins, pages[half:])...)

	got, n, err := Recover(primary, log1, log2)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("applied %d entries, want 2 (the stale one skipped)", n)
	}
	if !bytes.Equal(got[baseBlockSize:], bins) {
		t.Fatalf("recovered bins differ from the new state")
	}
	if le.Uint32(got[4:]) != 6 || le.Uint32(got[8:]) != 6 {
		t.Errorf("sequence numbers %d/%d, want 6/6", le.Uint32(got[4:]), le.Uint32(got[8:]))
	}

	// ReadFile finds the logs next to the hive.
	dir := t.TempDir()
	p := filepath.Join(dir, "SOFTWARE")
	os.WriteFile(p, primary, 0o644)
	os.WriteFile(p+".LOG1", log1, 0o644)
	os.WriteFile(p+".LOG2", log2, 0o644)
	h, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Dirty || h.Replayed != 2 {
		t.Errorf("dirty=%v replayed=%d", h.Dirty, h.Replayed)
	}
	if h.Lookup(`Software\App\Sub199`) == nil || !bytes.Equal(h.Lookup(`Software\App`).Value("v").Data, DWordData(2)) {
		t.Errorf("replayed hive lacks the new state")
	}
	_ = want

	// A bad hash stops replay at that entry: only the first half applies,
	// so the result is the old state with some new pages, which is what
	// Windows would load too; here it must at least not be the new state.
	bad := append([]byte(nil), log2...)
	bad[logSector+logEntryHeader+10] ^= 1
	got, n, err = Recover(primary, log1, bad)
	if err != nil || n != 1 {
		t.Errorf("with a corrupt second entry: applied %d (%v), want 1", n, err)
	}
	if bytes.Equal(got[baseBlockSize:], bins) {
		t.Errorf("a corrupt entry was applied")
	}
}

func TestRecoverBadChecksumUsesLogBase(t *testing.T) {
	old, new, _ := twoStates(t)
	primary := dirtyPrimary(old, 9)
	logBlock := logBase(primary, logTypeNew, 9)
	primary[100] ^= 0xFF // checksum now wrong
	bins := new[baseBlockSize:]
	l := append(logBlock, logEntryBytes(9, len(bins), bins, changedPages(old, new))...)
	got, n, err := Recover(primary, l)
	if err != nil || n != 1 {
		t.Fatalf("applied %d: %v", n, err)
	}
	if _, err := Parse(got); err != nil {
		t.Errorf("recovered hive: %v", err)
	}
	if _, _, err := Recover(primary); err == nil {
		t.Errorf("a bad base block without logs must fail")
	}
}

func TestRecoverOldFormat(t *testing.T) {
	old, _, _ := twoStates(t)
	// Same size: change a value in place, then log its 512-byte pages.
	h, _ := Parse(old)
	h.Lookup(`Software\App`).SetValue("v", RegDWord, DWordData(7))
	h.sequence = 0
	newImg := hiveBytes(t, h)
	if len(newImg) != len(old) {
		t.Fatalf("sizes differ")
	}
	primary := dirtyPrimary(old, 1)
	l := logBase(primary, logTypeOld, 2)
	size := len(old) - baseBlockSize
	bitmap := make([]byte, (size/logSector+7)/8)
	var pages []byte
	for i := 0; i < size/logSector; i++ {
		a, b := old[baseBlockSize+i*logSector:][:logSector], newImg[baseBlockSize+i*logSector:][:logSector]
		if !bytes.Equal(a, b) {
			bitmap[i/8] |= 1 << (i % 8)
			pages = append(pages, b...)
		}
	}
	vec := append([]byte("DIRT"), bitmap...)
	vec = append(vec, make([]byte, (logSector-len(vec)%logSector)%logSector)...)
	l = append(append(l, vec...), pages...)
	got, n, err := Recover(primary, l)
	if err != nil || n == 0 {
		t.Fatalf("applied %d: %v", n, err)
	}
	if !bytes.Equal(got[baseBlockSize:], newImg[baseBlockSize:]) {
		t.Errorf("old-format replay did not give the new state")
	}
	// A log from another write (other timestamp) does not apply.
	le.PutUint64(l[12:], 1)
	FixChecksum(l)
	if _, n, _ := Recover(primary, l); n != 0 {
		t.Errorf("foreign log applied")
	}
}

func TestRecoverCleanHiveUntouched(t *testing.T) {
	old, _, _ := twoStates(t)
	got, n, err := Recover(old, []byte("junk"))
	if err != nil || n != 0 || !bytes.Equal(got, old) {
		t.Errorf("clean hive changed: n=%d err=%v", n, err)
	}
}

// FuzzRecover feeds arbitrary log bytes to a dirty hive: no panics, and
// whatever is recovered is returned with a valid base block.
func FuzzRecover(f *testing.F) {
	h := New()
	h.CreateKey("A")
	primary, _ := h.Marshal()
	primary = dirtyPrimary(primary, 1)
	f.Add(append(logBase(primary, logTypeNew, 1), logEntryBytes(1, 4096, primary[baseBlockSize:], []int{0})...))
	f.Fuzz(func(t *testing.T, l []byte) {
		if len(l) >= logSector {
			FixChecksum(l)
		}
		got, n, err := Recover(primary, l)
		if err != nil || n == 0 {
			return
		}
		if le.Uint32(got[508:]) != checksum(got) {
			t.Fatalf("recovered base block has a bad checksum")
		}
		Parse(got)
	})
}
