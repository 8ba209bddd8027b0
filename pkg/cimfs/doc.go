// Package cimfs reads and writes CimFS images (the "classic" .cim file plus
// its region_<GUID>_<n> and objectid_<GUID>_<n> files) in pure Go.
//
// The writer produces format 3.0, as current Windows does: 0x68-byte file
// records with a parent FileID and a back-link table, a metadata region
// (type 0), a small-data region (type 2, 8-byte aligned content) and, only
// when a file is 4 KiB or larger, a data region (type 1, page-aligned
// content). File content is streamed into the region files as it is added;
// only metadata is kept in memory. Security descriptors, EAs, reparse
// buffers and identical file contents are stored once (the objectid files
// index every object by length and digest, as cimfs.dll does). The reader
// accepts formats 2.x and 3.0 and reads Data, sparse and PE-image streams.
// It reads only what the structures point at, checked against the region
// file's size and against limits of its own (MaxObjectLen, MaxDirEntries,
// MaxFiles), since a region file may be sparse and far larger than its
// content; the writer refuses a tree the reader would.
//
// A fork (Create with a parent image) lists the parent's region sets
// before its own and writes a complete file system of the merged view:
// unchanged files keep pointing into the parent's regions, removed names
// are simply absent.
//
// Measured on a real cimfs.dll image (../../../shared/testdata/windows/cimfs):
// header versions, header lengths, region types and Index fields, record
// size, metadata object order and alignment, back-link tables (the root's
// is {1, "."}), the objectid entry format (digest = the object itself when
// it fits in 24 bytes, else the first 24 bytes of its SHA-512; entries
// sorted by length then digest) and the upcase table. For that tree the
// writer reproduces the region and objectid files byte for byte.
//
// What only a Windows machine (CimMountImage) can confirm:
//   - where cimfs.dll puts large file data (the threshold and a separate
//     type-1 region are assumptions), and whether it expands PE files;
//   - the layout of the alternate-stream table (written as a link table of
//     Stream values at StreamTableOffset, like the back-link table) and the
//     order of names and objects when a directory has many entries;
//   - fork semantics: whether Windows copies the parent's metadata as this
//     writer does, what BaseRegionIndex means (written as 0: every offset
//     here is absolute in the fork's region index space) and whether the
//     RegionHeader Index field should be the region's index (cimfs.dll
//     wrote 0 in both files);
//   - the .cim header bytes at 0x18 and 0x40, non-zero in the real image
//     (written as zero here), and how hard links order their back links.
package cimfs
