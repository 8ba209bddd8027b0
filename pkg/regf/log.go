package regf

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Transaction logs (.LOG1/.LOG2, or .LOG in the old format) hold data that
// Windows wrote before updating the primary file. A hive whose base block
// has unequal sequence numbers or a bad checksum is dirty; Recover replays
// the logs onto it.

const (
	logSector      = 512
	logTypeOld     = 1 // base block file type of an old-format log
	logTypeNew     = 6 // ... of a new-format log (Windows 8.1 and later)
	logEntryHeader = 40
)

// Recover replays transaction logs onto a hive file image. It returns the
// recovered image and the number of log entries (new format) or dirty
// pages (old format) applied; a clean hive, or one no log applies to, comes
// back unchanged with 0. New-format logs are given in order (LOG1, LOG2);
// entries are verified with their Marvin32 hashes and applied in sequence
// order from the primary's secondary sequence number on, stopping at the
// first bad entry of each log.
func Recover(primary []byte, logs ...[]byte) ([]byte, int, error) {
	if len(primary) < baseBlockSize {
		return nil, 0, &FormatError{0, "file shorter than the base block"}
	}
	base := append([]byte(nil), primary[:baseBlockSize]...)
	baseOK := string(base[:4]) == "regf" && le.Uint32(base[508:]) == checksum(base)
	if baseOK && le.Uint32(base[4:]) == le.Uint32(base[8:]) {
		return primary, 0, nil
	}
	if !baseOK { // take the base block from a log's copy
		i := slices.IndexFunc(logs, validLogBase)
		if i < 0 {
			return nil, 0, &FormatError{508, "base block checksum is wrong and no log holds a valid copy"}
		}
		clear(base)
		copy(base, logs[i][:logSector])
		le.PutUint32(base[28:], 0)
	}
	data := append([]byte(nil), primary[baseBlockSize:]...)
	size := int(le.Uint32(base[40:]))

	var entries []logEntry
	for _, l := range logs {
		if !validLogBase(l) {
			continue
		}
		switch le.Uint32(l[28:]) {
		case logTypeNew:
			entries = append(entries, readLogEntries(l)...)
		case logTypeOld:
			if le.Uint64(l[12:]) != le.Uint64(base[12:]) {
				continue // not the log of this primary's last write
			}
			n, newData, err := applyDirtyVector(data, size, l)
			if err != nil {
				return nil, 0, err
			}
			if n == 0 {
				continue
			}
			data = newData
			le.PutUint32(base[8:], le.Uint32(base[4:]))
			return finish(base, data, size), n, nil
		}
	}

	// New bins come with their pages, so a hive cannot outgrow the data.
	limit := len(primary)
	for _, l := range logs {
		limit += len(l)
	}
	first := le.Uint32(base[8:])
	slices.SortStableFunc(entries, func(a, b logEntry) int { return cmp.Compare(a.seq, b.seq) })
	applied := 0
	var last uint32
	for _, e := range entries {
		if e.seq < first || applied > 0 && e.seq == last {
			continue // already applied, or the same entry in both logs
		}
		if e.binsSize > limit {
			break // larger than all the data there is: a bogus entry
		}
		data = resize(data, e.binsSize)
		for _, p := range e.pages {
			copy(data[p.off:], p.data)
		}
		size, last = e.binsSize, e.seq
		applied++
	}
	if applied == 0 {
		return primary, 0, nil
	}
	le.PutUint32(base[4:], last)
	le.PutUint32(base[8:], last)
	return finish(base, data, size), applied, nil
}

func finish(base, data []byte, size int) []byte {
	le.PutUint32(base[40:], uint32(size))
	FixChecksum(base)
	return append(base, resize(data, size)...)
}

func resize(b []byte, n int) []byte {
	if n <= len(b) {
		return b[:n]
	}
	return append(b, make([]byte, n-len(b))...)
}

// validLogBase reports whether a log starts with a consistent base block
// copy: signature, checksum, log file type, equal sequence numbers.
func validLogBase(l []byte) bool {
	if len(l) < logSector || string(l[:4]) != "regf" || le.Uint32(l[508:]) != checksum(l) {
		return false
	}
	t := le.Uint32(l[28:])
	return (t == logTypeOld || t == logTypeNew) && le.Uint32(l[4:]) == le.Uint32(l[8:])
}

type logPage struct {
	off  int
	data []byte
}

type logEntry struct {
	seq      uint32
	binsSize int
	pages    []logPage
}

// readLogEntries returns the valid entries of a new-format log, up to the
// first invalid one.
func readLogEntries(l []byte) []logEntry {
	var out []logEntry
	for off := logSector; off+logEntryHeader <= len(l); {
		h := l[off:]
		size := int(le.Uint32(h[4:]))
		if string(h[:4]) != "HvLE" || size < logEntryHeader || size%logSector != 0 || size > len(h) {
			break
		}
		if le.Uint64(h[24:]) != marvin32(logSeed, h[logEntryHeader:size]) ||
			le.Uint64(h[32:]) != marvin32(logSeed, h[:32]) {
			break
		}
		e, err := parseLogEntry(h[:size])
		if err != nil {
			break
		}
		out = append(out, e)
		off += size
	}
	return out
}

func parseLogEntry(h []byte) (logEntry, error) {
	e := logEntry{seq: le.Uint32(h[12:]), binsSize: int(le.Uint32(h[16:]))}
	count := int(le.Uint32(h[20:]))
	if e.binsSize%binAlign != 0 || count > (len(h)-logEntryHeader)/8 {
		return e, errors.New("bad log entry header")
	}
	pageData := logEntryHeader + 8*count
	for i := 0; i < count; i++ {
		ref := h[logEntryHeader+8*i:]
		off, n := int(le.Uint32(ref)), int(le.Uint32(ref[4:]))
		if n > len(h)-pageData || off < 0 || off+n > e.binsSize || off+n < off {
			return e, fmt.Errorf("log entry page %d out of range", i)
		}
		e.pages = append(e.pages, logPage{off, h[pageData : pageData+n]})
		pageData += n
	}
	return e, nil
}

// applyDirtyVector applies an old-format log: a DIRT bitmap of 512-byte
// pages of the hive bins data, then the dirty pages in bitmap order.
func applyDirtyVector(data []byte, size int, l []byte) (int, []byte, error) {
	sector := logSector * max(1, min(8, int(le.Uint32(l[44:]))))
	if len(l) < sector+4 || string(l[sector:sector+4]) != "DIRT" {
		return 0, data, nil
	}
	bitmap := l[sector+4:]
	nbits := size / logSector
	if len(bitmap)*8 < nbits {
		return 0, nil, &FormatError{int64(sector), "log dirty vector shorter than the hive"}
	}
	bitmap = bitmap[:(nbits+7)/8]
	pages := sector + (4+len(bitmap)+logSector-1)/logSector*logSector
	data = resize(data, size)
	n := 0
	for i := 0; i < nbits; i++ {
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		src := pages + n*logSector
		if src+logSector > len(l) {
			return 0, nil, &FormatError{int64(src), "log ends before its dirty pages"}
		}
		copy(data[i*logSector:], l[src:src+logSector])
		n++
	}
	return n, data, nil
}
