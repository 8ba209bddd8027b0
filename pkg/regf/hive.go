// Package regf reads, edits and writes Windows registry hive files (the
// "regf" format), including delta hives with layered keys, and merges and
// diffs hives the way Windows container layers stack them.
//
// A [Hive] is a tree of keys ([Key]), each with values ([Value]). [Parse] reads a whole
// hive into memory ([ReadFile] also replays the transaction logs of a dirty
// hive, see [Recover]), [Hive.Marshal] writes a fresh, compact hive file and
// [Hive.WriteFile] writes one atomically. [Merge] and [Diff] combine a base
// hive with a delta hive. [EditFile], [SetFileValue] and the functions beside
// them edit a hive file, leaving it as it was on any error. Names
// of keys and values compare case-insensitively, as Windows compares them
// ([EqualNames]).
//
// Subpackages: regtext (.reg files), bcd (boot configuration stores),
// cimboot (the registry edits of a CIM-booted utility VM).
package regf

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

const (
	baseBlockSize = 4096
	binHeaderSize = 32
	binAlign      = 4096
	// bigDataSegment is the most data one big-data segment holds; values
	// larger than this are stored as a db record (hive version 1.4+).
	bigDataSegment = 16344
	flagLayered    = 0x2 // base block flags: the hive is a delta hive
	noCell         = 0xFFFFFFFF
)

// Hive is a registry hive held in memory.
type Hive struct {
	Root *Key
	// Layered marks a delta (differencing) hive: written as version 1.6
	// with the layered-keys flag, keys carry layer semantics.
	Layered bool
	// MinorVersion is the format version read (1.x); the writer uses 5,
	// or 6 for layered hives.
	MinorVersion uint32
	// Dirty is set when the hive file read had unequal sequence numbers (or,
	// with logs, a bad checksum): Windows did not finish writing it and its
	// transaction logs hold newer data.
	Dirty bool
	// Replayed counts the log entries (or old-format dirty pages) ReadFile
	// applied from the .LOG1/.LOG2/.LOG files next to a dirty hive.
	Replayed int
	FileName string    // the name recorded in the base block
	Modified time.Time // base block last-written time
	sequence uint32
}

// New returns an empty hive whose root key is named "ROOT" and carries a
// default security descriptor.
func New() *Hive {
	now := time.Now().UTC()
	root := &Key{name: "ROOT", Modified: now, Security: DefaultSecurity(),
		Flags: KeyHiveEntry | KeyNoDelete}
	return &Hive{Root: root, MinorVersion: 5, Modified: now}
}

// Lookup returns the key at path (`A\B\C`, case-insensitive), or nil.
func (h *Hive) Lookup(path string) *Key { return h.Root.Lookup(path) }

// OpenKey returns the key at path ("" is the root), or an error naming
// the path and wrapping ErrNotFound.
func (h *Hive) OpenKey(path string) (*Key, error) {
	if k := h.Root.Lookup(path); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("key %q: %w", path, ErrNotFound)
}

// CreateKey returns the key at path, creating missing keys on the way.
func (h *Hive) CreateKey(path string) (*Key, error) { return h.Root.CreatePath(path) }

// DeleteKey removes the key at path and its subtree.
func (h *Hive) DeleteKey(path string) error {
	parts := SplitPath(path)
	if len(parts) == 0 {
		return fmt.Errorf("cannot delete the root key")
	}
	parent := h.Root.Lookup(strings.Join(parts[:len(parts)-1], `\`))
	if parent == nil || !parent.DeleteSubkey(parts[len(parts)-1]) {
		return fmt.Errorf("key %q: %w", path, ErrNotFound)
	}
	return nil
}

// ReadFile parses the hive file at path. When the file is dirty and
// transaction logs sit next to it (path.LOG1 and path.LOG2, or path.LOG),
// they are replayed in memory first, as Windows would on loading it; the
// file itself is not changed.
func ReadFile(path string) (*Hive, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var logs [][]byte
	for _, ext := range []string{".LOG1", ".LOG2", ".LOG"} {
		if l, err := os.ReadFile(path + ext); err == nil {
			logs = append(logs, l)
		}
	}
	replayed := 0
	if len(logs) > 0 {
		if b, replayed, err = Recover(b, logs...); err != nil {
			return nil, fmt.Errorf("%s: replaying logs: %w", path, err)
		}
	}
	h, err := Parse(b)
	switch {
	case err != nil && replayed > 0:
		return nil, fmt.Errorf("%s (after replaying %d log entries): %w", path, replayed, err)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", path, err)
	case replayed > 0:
		h.Dirty, h.Replayed = true, replayed
	}
	return h, nil
}

// WriteFile marshals the hive and writes it atomically (temp file, fsync,
// rename), so path holds either the old or the whole new hive.
func (h *Hive) WriteFile(path string) error {
	b, err := h.Marshal()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.Write(path, b, 0o644, true)
}

// EditFile reads the hive file at path (replaying its logs, as ReadFile
// does), applies edit, stamps the hive's modification time and writes it
// back atomically. On any error the file is left as it was.
func EditFile(path string, edit func(*Hive) error) error {
	h, err := ReadFile(path)
	if err != nil {
		return err
	}
	if err := edit(h); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	h.Modified = time.Now().UTC()
	return h.WriteFile(path)
}

// checksum is the base block checksum: the XOR of the first 508 bytes as
// little-endian uint32s, with 0 and 0xFFFFFFFF mapped away.
func checksum(base []byte) uint32 {
	var x uint32
	for i := 0; i < 508; i += 4 {
		x ^= binary.LittleEndian.Uint32(base[i:])
	}
	switch x {
	case 0:
		return 1
	case 0xFFFFFFFF:
		return 0xFFFFFFFE
	}
	return x
}

// FixChecksum recomputes the checksum of a hive file's base block in place
// (for tools and tests that patch base block fields).
func FixChecksum(b []byte) {
	if len(b) >= 512 {
		binary.LittleEndian.PutUint32(b[508:], checksum(b))
	}
}

// FILETIME conversions: 100 ns ticks since 1601-01-01 UTC.
func fromFiletime(ft uint64) time.Time {
	if ft == 0 {
		return time.Time{}
	}
	secs := int64(ft/10_000_000) - 11644473600
	return time.Unix(secs, int64(ft%10_000_000)*100).UTC()
}

func toFiletime(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	secs := t.Unix() + 11644473600
	if secs < 0 {
		return 0
	}
	return uint64(secs)*10_000_000 + uint64(t.Nanosecond()/100)
}

// DefaultSecurity is the descriptor New gives the root key: owner
// Administrators, group SYSTEM, full control for Administrators and SYSTEM
// and read access for Users, inherited by subkeys.
func DefaultSecurity() []byte {
	admins := sid(5, 32, 544)
	system := sid(5, 18)
	users := sid(5, 32, 545)
	const keyAll, keyRead = 0xF003F, 0x20019
	const containerInherit = 0x02
	var aces []byte
	for _, a := range []struct {
		mask uint32
		sid  []byte
	}{{keyAll, admins}, {keyAll, system}, {keyRead, users}} {
		ace := []byte{0, containerInherit, 0, 0} // ACCESS_ALLOWED_ACE
		ace = binary.LittleEndian.AppendUint32(ace, a.mask)
		ace = append(ace, a.sid...)
		binary.LittleEndian.PutUint16(ace[2:], uint16(len(ace)))
		aces = append(aces, ace...)
	}
	acl := []byte{2, 0, 0, 0, 3, 0, 0, 0}
	binary.LittleEndian.PutUint16(acl[2:], uint16(8+len(aces)))
	acl = append(acl, aces...)
	// Self-relative header: revision, control (SE_SELF_RELATIVE |
	// SE_DACL_PRESENT), then offsets of owner, group, SACL, DACL.
	sd := make([]byte, 20)
	sd[0] = 1
	binary.LittleEndian.PutUint16(sd[2:], 0x8004)
	binary.LittleEndian.PutUint32(sd[4:], uint32(20+len(acl)))
	binary.LittleEndian.PutUint32(sd[8:], uint32(20+len(acl)+len(admins)))
	binary.LittleEndian.PutUint32(sd[16:], 20)
	sd = append(sd, acl...)
	sd = append(sd, admins...)
	return append(sd, system...)
}

// sid encodes S-1-<authority>-<subs...>.
func sid(authority byte, subs ...uint32) []byte {
	b := []byte{1, byte(len(subs)), 0, 0, 0, 0, 0, authority}
	for _, s := range subs {
		b = binary.LittleEndian.AppendUint32(b, s)
	}
	return b
}
