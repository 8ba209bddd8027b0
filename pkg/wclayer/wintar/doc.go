// Package wintar reads and writes Windows container layer tars: the tar
// format Windows (go-winio's backuptar, hcsshim's ociwclayer) uses to carry a
// layer folder's Files/, Hives/ and UtilityVM/Files/ trees with their Windows
// metadata in PAX records.
//
// A Reader yields typed, validated entries (files, directories, symlinks,
// junctions, hard links, alternate data streams, whiteouts) with their file
// attributes, four timestamps, security descriptor (binary; legacy SDDL is
// converted), extended attributes and, for links, the encoded
// REPARSE_DATA_BUFFER. A Writer produces the same format, so a layer read and
// written again gives the same entries and metadata; the Writer's output is a
// deterministic function of the entries.
//
// PAX keys read and written:
//
//	MSWINDOWS.fileattr       decimal FILE_ATTRIBUTE_* bits
//	MSWINDOWS.rawsd          base64 self-relative security descriptor
//	MSWINDOWS.sd             legacy SDDL string (read only, converted)
//	MSWINDOWS.mountpoint     "1": a symlink entry that is a junction
//	MSWINDOWS.xattr.<name>   base64 value of one extended attribute
//	LIBARCHIVE.creationtime  creation time, "sec[.nsec]"
//
// Anything the format does not allow is refused with an error naming the
// entry: names outside Files/, Hives/ and UtilityVM/Files/, "..", absolute
// names, characters Windows forbids, components over 255 UTF-16 units or
// paths over 32767, names equal but for case, links leaving their tree,
// malformed PAX values, unknown MSWINDOWS keys, device and sparse entries,
// opaque whiteouts and archives cut short (including ones missing the
// end-of-archive marker). PAX keys of other vendors (SCHILY., LIBARCHIVE.
// other than creationtime) have no Windows meaning and are ignored. What a
// tar can make the Reader hold is bounded (MaxEntries, MaxTreeNodes,
// MaxNameBytes; the error wraps ErrLimit), and checking an entry costs the
// length of its name, however deep.
//
// Alternate data streams are written "file:stream" (as Windows exports
// them) and read in that form or as "file:stream:$DATA".
package wintar
