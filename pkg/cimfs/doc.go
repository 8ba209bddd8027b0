// Package cimfs reads and writes CimFS images in pure Go: the "classic"
// .cim file plus the region_<GUID>_<n> and objectid_<GUID>_<n> files beside
// it, the format Windows mounts with CimMountImage.
//
// Writing: [Create] starts an image; [Writer.Add], [Writer.AddLink],
// [Writer.AddAlternateStream] and [Writer.Remove] build the tree (content
// is streamed to disk, only metadata is held in memory); [Writer.Commit]
// makes the files appear under their final names, and nothing does before
// it ([Writer.Close] without Commit removes everything). The writer produces
// format 3.0, as current Windows does, and stores identical security
// descriptors, EAs, reparse buffers and file contents once.
//
// Forks: Create with a parent image (in the same directory) makes a fork,
// an image that shares the parent's region files and holds the complete
// merged view: Add and Remove change it, unchanged files keep pointing into
// the parent's regions.
//
// Reading: [Open] (or [OpenFS]) opens an image of format 2.x or 3.0. The
// [Image] looks names up case-insensitively as Windows does ([Image.Stat],
// [Image.ReadDir], [Image.Open], [Image.Walk], [Image.WalkTree]), gives each
// [File]'s attributes, times, security descriptor, EAs, reparse data, hard
// links and alternate streams, and copies a subtree out with
// [Image.Extract]. [Image.FS] is the same image as an [io/fs.FS], for
// fs.WalkDir, fs.Sub, os.CopyFS and the like; see [FS] for how Windows
// names, reparse points and streams map onto io/fs.
//
// An image is untrusted input: the reader reads only what its structures
// point at, checked against the region files' sizes and against
// [MaxObjectLen], [MaxDirEntries] and [MaxFiles] (a region file may be
// sparse and far larger than its content), and reports a malformed image as
// an error wrapping [ErrCorrupt]. The writer refuses a tree the reader
// would.
//
// The writer reproduces a real cimfs.dll image byte for byte; some layout
// choices (large-file placement, the alternate-stream table, forks) are not
// yet confirmed by a Windows mount: README.md lists what was measured and
// what only Windows can confirm.
package cimfs
