// Package sparse finds the data extents of a sparse file, so copies and
// conversions skip its holes instead of reading through them.
package sparse

// Extent is a byte range.
type Extent struct{ Off, Len int64 }
