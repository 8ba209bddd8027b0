package wintar

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Kind is what a layer tar entry describes.
type Kind uint8

// Entry kinds.
const (
	KindFile     Kind = iota + 1 // regular file, data follows
	KindDir                      // directory
	KindSymlink                  // symbolic link (reparse point)
	KindJunction                 // junction / mount point (reparse point)
	KindHardlink                 // another name for an earlier file (Target)
	KindStream                   // alternate data stream of Path, data follows
	KindWhiteout                 // Path is deleted from the layers below
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindDir:
		return "directory"
	case KindSymlink:
		return "symlink"
	case KindJunction:
		return "junction"
	case KindHardlink:
		return "hard link"
	case KindStream:
		return "alternate data stream"
	case KindWhiteout:
		return "whiteout"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// File attributes used here (FILE_ATTRIBUTE_*).
const (
	AttrReadOnly     = 0x0001
	AttrHidden       = 0x0002
	AttrSystem       = 0x0004
	AttrDirectory    = 0x0010
	AttrArchive      = 0x0020
	AttrNormal       = 0x0080
	AttrSparse       = 0x0200
	AttrReparsePoint = 0x0400
)

// Windows limits on names.
const (
	MaxComponentLen = 255   // UTF-16 units per path component
	MaxPathLen      = 32767 // UTF-16 units per path
)

// Entry is one entry of a Windows layer tar.
type Entry struct {
	// Path is the slash-separated name inside the layer, under Files/,
	// Hives/ or UtilityVM/Files/ ("Files/Windows/win.ini"). For a stream it
	// is the file the stream belongs to; for a whiteout, the deleted path.
	Path string
	// Stream is a stream's name, without ":$DATA".
	Stream string
	Kind   Kind
	// Attributes are FILE_ATTRIBUTE_* bits.
	Attributes uint32

	CreationTime, LastAccessTime, LastWriteTime, ChangeTime time.Time

	// SecurityDescriptor is self-relative; nil when the entry has none.
	SecurityDescriptor []byte
	// EAs are the extended attributes, sorted by name.
	EAs []EA
	// Target is a symlink's or junction's target (a Windows path, as
	// stored in the tar) or a hard link's target Path.
	Target string
	// Reparse is a symlink's or junction's REPARSE_DATA_BUFFER, encoded
	// from Target (see EncodeReparse).
	Reparse []byte
	// Size is the data length of a file or stream.
	Size int64
}

// Name is the entry's name in the tar.
func (e *Entry) Name() string {
	switch e.Kind {
	case KindStream:
		return e.Path + ":" + e.Stream
	case KindWhiteout:
		dir, base := splitDir(e.Path)
		return dir + "/" + whiteoutPrefix + base
	}
	return e.Path
}

const whiteoutPrefix = ".wh."

// EntryError is a bad entry: Entry is its name in the tar.
type EntryError struct {
	Entry string
	Err   error
}

func (e *EntryError) Error() string {
	name := fmt.Sprintf("%q", e.Entry)
	if len(e.Entry) > 96 { // names run to 32 767 UTF-16 units
		name = fmt.Sprintf("%q… (%d bytes)", e.Entry[:96], len(e.Entry))
	}
	return fmt.Sprintf("layer tar entry %s: %v", name, e.Err)
}
func (e *EntryError) Unwrap() error { return e.Err }

// tree says which part of a layer a path is in.
type tree uint8

const (
	treeFiles tree = iota + 1
	treeHives
	treeUVM
)

// checkPath validates a slash path inside a layer and returns its tree and
// its depth below the tree's root (Files/a is 1; the root itself 0).
func checkPath(p string) (tree, int, error) {
	if p == "" {
		return 0, 0, errors.New("empty name")
	}
	if p[0] == '/' || p[0] == '\\' || isDrivePath(p) {
		return 0, 0, errors.New("absolute name")
	}
	if strings.Contains(p, `\`) {
		return 0, 0, errors.New(`backslash in name (tar names use "/")`)
	}
	if n := utf16Len(p); n > MaxPathLen {
		return 0, 0, fmt.Errorf("name of %d UTF-16 units, Windows allows %d", n, MaxPathLen)
	}
	comps := strings.Split(p, "/")
	for _, c := range comps {
		if err := checkComponent(c); err != nil {
			return 0, 0, err
		}
	}
	switch {
	case strings.EqualFold(comps[0], "Files"):
		return treeFiles, len(comps) - 1, nil
	case strings.EqualFold(comps[0], "Hives"):
		if len(comps) > 2 {
			return 0, 0, errors.New("Hives/ holds only hive files, no subdirectories")
		}
		return treeHives, len(comps) - 1, nil
	case strings.EqualFold(comps[0], "UtilityVM"):
		if len(comps) == 1 {
			return treeUVM, -1, nil
		}
		if strings.EqualFold(comps[1], "Files") {
			return treeUVM, len(comps) - 2, nil
		}
	}
	return 0, 0, errors.New("outside Files/, Hives/ and UtilityVM/Files/")
}

func checkComponent(c string) error {
	switch c {
	case "":
		return errors.New("empty path component")
	case ".", "..":
		return fmt.Errorf("%q path component", c)
	}
	if !utf8.ValidString(c) {
		return fmt.Errorf("component %q is not UTF-8", c)
	}
	for _, r := range c {
		if r < 0x20 || strings.ContainsRune(`<>:"|?*`, r) {
			return fmt.Errorf("component %q holds %q, which Windows forbids in names", c, r)
		}
	}
	if n := utf16Len(c); n > MaxComponentLen {
		return fmt.Errorf("component of %d UTF-16 units, Windows allows %d", n, MaxComponentLen)
	}
	return nil
}

func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// splitStream splits "dir/file:stream[:$DATA]" into the file path and the
// stream name; ok is false when the last component has no colon.
func splitStream(name string) (path, stream string, ok bool, err error) {
	slash := strings.LastIndexByte(name, '/')
	i := strings.IndexByte(name[slash+1:], ':')
	if i < 0 {
		return name, "", false, nil
	}
	path, stream = name[:slash+1+i], name[slash+2+i:]
	if s, typ, found := strings.Cut(stream, ":"); found {
		if !strings.EqualFold(typ, "$DATA") {
			return "", "", false, fmt.Errorf("stream type %q: only $DATA streams are supported", typ)
		}
		stream = s
	}
	if stream == "" {
		return "", "", false, errors.New("empty stream name")
	}
	if err := checkComponent(stream); err != nil {
		return "", "", false, fmt.Errorf("stream name: %w", err)
	}
	return path, stream, true, nil
}

func splitDir(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// checkLinkTarget refuses symlink and junction targets Windows cannot hold
// and relative targets that climb above the root of the link's tree.
func checkLinkTarget(target string, junction bool, depth int) error {
	if target == "" {
		return errors.New("empty link target")
	}
	if strings.ContainsRune(target, 0) {
		return errors.New("NUL in link target")
	}
	if n := utf16Len(target); n > MaxPathLen {
		return fmt.Errorf("link target of %d UTF-16 units, Windows allows %d", n, MaxPathLen)
	}
	_, relative := ntPath(target)
	if strings.HasPrefix(target, `\??\`) {
		relative = false
	}
	if junction && relative {
		return fmt.Errorf("junction target %q is not an absolute path", target)
	}
	if !relative || strings.HasPrefix(target, `\`) || strings.HasPrefix(target, "/") {
		return nil // resolved against the container's own drive
	}
	// depth counts the link itself; its directory is one up.
	level := depth - 1
	for _, c := range strings.FieldsFunc(target, func(r rune) bool { return r == '\\' || r == '/' }) {
		switch c {
		case ".":
		case "..":
			level--
			if level < 0 {
				return fmt.Errorf("link target %q leaves the layer's tree", target)
			}
		default:
			level++
		}
	}
	return nil
}

// upper folds a name the way Windows compares names (case-insensitively).
func upper(s string) string { return strings.ToUpper(s) }
