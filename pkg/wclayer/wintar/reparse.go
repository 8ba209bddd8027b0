package wintar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/layervisor/layervisor/internal/utf16le"
)

// Reparse tags of the reparse points a layer tar can carry.
const (
	ReparseTagMountPoint = 0xA0000003 // IO_REPARSE_TAG_MOUNT_POINT (junction)
	ReparseTagSymlink    = 0xA000000C // IO_REPARSE_TAG_SYMLINK
)

// symlinkFlagRelative is SYMLINK_FLAG_RELATIVE in a symlink reparse buffer.
const symlinkFlagRelative = 1

// EncodeReparse builds the REPARSE_DATA_BUFFER of a symlink or junction to
// target (a Windows path, as the tar's link name holds it):
//
//	u32 ReparseTag, u16 ReparseDataLength (bytes after these 8), u16 Reserved,
//	u16 SubstituteNameOffset, u16 SubstituteNameLength,
//	u16 PrintNameOffset, u16 PrintNameLength,
//	u32 Flags (symlinks only: 1 = relative target),
//	PathBuffer: substitute name, NUL, print name, NUL (UTF-16LE).
//
// The print name is the target as given; the substitute name is its NT form
// (`\??\` in front of `X:`, `\\?\` and UNC targets); other targets are
// relative. Offsets are into PathBuffer, lengths in bytes without the NUL.
func EncodeReparse(target string, junction bool) []byte {
	nt, relative := ntPath(target)
	sub := utf16le.Encode(nt)
	prt := utf16le.Encode(target)
	hdr := 8
	tag := uint32(ReparseTagMountPoint)
	if !junction {
		hdr += 4
		tag = ReparseTagSymlink
	}
	b := make([]byte, 8+hdr, 8+hdr+len(sub)+len(prt)+4)
	binary.LittleEndian.PutUint32(b[0:], tag)
	binary.LittleEndian.PutUint16(b[4:], uint16(hdr+len(sub)+len(prt)+4))
	binary.LittleEndian.PutUint16(b[8:], 0)
	binary.LittleEndian.PutUint16(b[10:], uint16(len(sub)))
	binary.LittleEndian.PutUint16(b[12:], uint16(len(sub)+2))
	binary.LittleEndian.PutUint16(b[14:], uint16(len(prt)))
	if !junction && relative {
		binary.LittleEndian.PutUint32(b[16:], symlinkFlagRelative)
	}
	b = append(b, sub...)
	b = append(b, 0, 0)
	b = append(b, prt...)
	return append(b, 0, 0)
}

// ntPath returns target's NT path and whether it is relative (neither a
// drive path, a \\?\ path nor a UNC path).
func ntPath(target string) (string, bool) {
	switch {
	case strings.HasPrefix(target, `\\?\`):
		return `\??\` + target[4:], false
	case strings.HasPrefix(target, `\\`):
		return `\??\UNC\` + target[2:], false
	case isDrivePath(target):
		return `\??\` + target, false
	}
	return target, true
}

func isDrivePath(s string) bool {
	return len(s) >= 2 && s[1] == ':' && (s[0]|0x20 >= 'a' && s[0]|0x20 <= 'z')
}

// DecodeReparse reads a symlink or junction REPARSE_DATA_BUFFER and returns
// its target (the print name, or the substitute name without `\??\` when the
// print name is empty) and whether it is a junction.
func DecodeReparse(b []byte) (target string, junction bool, err error) {
	if len(b) < 16 {
		return "", false, errors.New("reparse buffer truncated")
	}
	tag := binary.LittleEndian.Uint32(b)
	hdr := 16
	switch tag {
	case ReparseTagMountPoint:
		junction = true
	case ReparseTagSymlink:
		hdr = 20
	default:
		return "", false, fmt.Errorf("reparse tag %#x is neither a symlink nor a junction", tag)
	}
	if n := int(binary.LittleEndian.Uint16(b[4:])); len(b) < hdr || n+8 != len(b) {
		return "", false, fmt.Errorf("reparse data length %d does not match the %d-byte buffer", n, len(b))
	}
	name := func(off, n int) (string, error) {
		if off%2 != 0 || n%2 != 0 || hdr+off+n > len(b) {
			return "", fmt.Errorf("reparse name at %d+%d outside the buffer", off, n)
		}
		return utf16le.Decode(b[hdr+off : hdr+off+n]), nil
	}
	sub, err := name(int(binary.LittleEndian.Uint16(b[8:])), int(binary.LittleEndian.Uint16(b[10:])))
	if err != nil {
		return "", false, err
	}
	prt, err := name(int(binary.LittleEndian.Uint16(b[12:])), int(binary.LittleEndian.Uint16(b[14:])))
	if err != nil {
		return "", false, err
	}
	if prt != "" {
		return prt, junction, nil
	}
	return strings.TrimPrefix(sub, `\??\`), junction, nil
}
