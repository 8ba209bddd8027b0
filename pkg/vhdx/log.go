package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrLogNeedsReplay means the file has log entries that were never applied
// (its writer stopped before closing it) and it was opened read-only.
var ErrLogNeedsReplay = errors.New("the VHDX log holds unapplied entries; open the file for writing to replay them (layervisor disk check --repair)")

const (
	logSector      = 4 * kib
	logEntryHeader = 64
	logDescSize    = 32
	maxLogLength   = 256 * mib
)

type logDesc struct {
	zero     bool
	length   int64 // zero descriptors
	leading  []byte
	trailing []byte
	fileOff  int64
}

type logEntry struct {
	off         int64 // offset in the log
	length      int64
	tail        int64
	seq         uint64
	flushedSize int64
	lastSize    int64
	descs       []logDesc
	data        [][]byte // 4084-byte payloads, one per data descriptor
}

// handleLog replays the active log sequence (read-write) or refuses
// (read-only). A log GUID with no valid entry is an empty log.
func (d *Disk) handleLog() error {
	off, length := int64(d.hdr.logOffset), int64(d.hdr.logLength)
	if length == 0 {
		return nil
	}
	if length > maxLogLength || off+length > d.physEnd {
		return corrupt("log at %d length %d does not fit the %d-byte file", off, length, d.physEnd)
	}
	buf := make([]byte, length)
	if err := d.readFull(buf, off); err != nil {
		return err
	}
	seq := activeSequence(buf, d.hdr.logGUID)
	if len(seq) == 0 {
		return nil
	}
	if d.readOnly {
		return fmt.Errorf("%w (%d entries)", ErrLogNeedsReplay, len(seq))
	}
	for _, e := range seq {
		if e.flushedSize > d.physEnd {
			return corrupt("log entry %d needs a file of at least %d bytes, file is %d: the log cannot be replayed", e.seq, e.flushedSize, d.physEnd)
		}
	}
	for _, e := range seq {
		di := 0
		for _, ds := range e.descs {
			var err error
			if ds.zero {
				_, err = d.f.WriteAt(make([]byte, ds.length), ds.fileOff)
			} else {
				sector := append(append(bytes.Clone(ds.leading), e.data[di]...), ds.trailing...)
				di++
				_, err = d.f.WriteAt(sector, ds.fileOff)
			}
			if err != nil {
				return fmt.Errorf("replay log entry %d: %w", e.seq, err)
			}
		}
		if e.lastSize > d.physEnd {
			if err := d.f.Truncate(e.lastSize); err != nil {
				return fmt.Errorf("replay log entry %d: %w", e.seq, err)
			}
			d.physEnd = e.lastSize
		}
	}
	if err := d.f.Sync(); err != nil {
		return err
	}
	h := d.hdr
	h.logGUID = GUID{}
	if err := d.writeHeader(h); err != nil {
		return err
	}
	d.logReplayed = true
	return nil
}

// activeSequence finds the entries to replay: the chain of consecutive valid
// entries whose newest entry has the highest sequence number and whose
// tail (oldest needed entry) the chain reaches.
func activeSequence(log []byte, guid GUID) []*logEntry {
	entries := map[int64]*logEntry{}
	for off := int64(0); off < int64(len(log)); off += logSector {
		if e := parseLogEntry(log, off, guid); e != nil {
			entries[off] = e
		}
	}
	var best []*logEntry
	for _, head := range entries {
		if best != nil && head.seq <= best[len(best)-1].seq {
			continue
		}
		// Walk from the head's tail forward to the head.
		var chain []*logEntry
		at := head.tail
		for len(chain) <= len(entries) {
			e, ok := entries[at]
			if !ok || (len(chain) > 0 && e.seq != chain[len(chain)-1].seq+1) {
				chain = nil
				break
			}
			chain = append(chain, e)
			if e == head {
				break
			}
			at = (at + e.length) % int64(len(log))
		}
		if len(chain) > 0 && chain[len(chain)-1] == head {
			best = chain
		}
	}
	return best
}

// parseLogEntry decodes the entry at off in the circular log, or returns
// nil when there is no valid entry of this log there.
func parseLogEntry(log []byte, off int64, guid GUID) *logEntry {
	n := int64(len(log))
	read := func(at, l int64) []byte { // circular read
		b := make([]byte, l)
		for i := int64(0); i < l; {
			c := copy(b[i:], log[(at+i)%n:])
			i += int64(c)
		}
		return b
	}
	h := read(off, logEntryHeader)
	le := binary.LittleEndian
	if !bytes.Equal(h[:4], sigLogEntry) {
		return nil
	}
	e := &logEntry{off: off, length: int64(le.Uint32(h[8:])), tail: int64(le.Uint32(h[12:])), seq: le.Uint64(h[16:])}
	count := int64(le.Uint32(h[24:]))
	var g GUID
	copy(g[:], h[32:48])
	e.flushedSize, e.lastSize = int64(le.Uint64(h[48:])), int64(le.Uint64(h[56:]))
	if g != guid || e.length <= 0 || e.length%logSector != 0 || e.length > n || e.tail%logSector != 0 || e.tail >= n || e.seq == 0 {
		return nil
	}
	descSectors := (logEntryHeader + logDescSize*count + logSector - 1) / logSector
	if descSectors > e.length/logSector {
		return nil
	}
	body := read(off, e.length)
	sum := le.Uint32(body[4:])
	le.PutUint32(body[4:], 0)
	if crc(body) != sum {
		return nil
	}
	dataAt := descSectors * logSector
	for i := int64(0); i < count; i++ {
		ds := body[logEntryHeader+logDescSize*i:]
		if le.Uint64(ds[24:]) != e.seq {
			return nil
		}
		switch string(ds[:4]) {
		case "zero":
			l, fo := int64(le.Uint64(ds[8:])), int64(le.Uint64(ds[16:]))
			if l%logSector != 0 || fo%logSector != 0 || l > maxLogLength {
				return nil
			}
			e.descs = append(e.descs, logDesc{zero: true, length: l, fileOff: fo})
		case "desc":
			fo := int64(le.Uint64(ds[16:]))
			if fo%logSector != 0 || dataAt+logSector > e.length {
				return nil
			}
			sec := body[dataAt : dataAt+logSector]
			if string(sec[:4]) != "data" || uint64(le.Uint32(sec[4:]))<<32|uint64(le.Uint32(sec[4092:])) != e.seq {
				return nil
			}
			e.descs = append(e.descs, logDesc{leading: ds[8:16], trailing: ds[4:8], fileOff: fo})
			e.data = append(e.data, sec[8:4092])
			dataAt += logSector
		default:
			return nil
		}
	}
	return e
}
