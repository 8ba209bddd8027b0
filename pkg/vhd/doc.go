// Package vhd reads and writes VHD (Virtual Hard Disk v1) files: the
// 512-byte footer that turns a raw image into a fixed VHD (layervisor
// appends it to every read-only layer image, layer.vhd), and dynamic VHDs,
// which it creates, reads and writes. Differencing VHDs are refused.
//
// New dynamic VHDs are laid out as QEMU lays them out: a copy of the footer
// at 0, the dynamic header ("cxsparse") at 512, the BAT at 1536 padded to
// whole sectors, then blocks (a sector bitmap and the block's data) in
// allocation order, and the footer last.
//
// Consistency: the footers, the header and the BAT's place never change
// after creation; writing only adds blocks and BAT entries, in an order
// that keeps the file a valid VHD whether the process dies or the machine
// loses power at any point:
//  1. the footer is written where the new block will end, growing the file,
//     so the block's data area is a hole that reads as zeros;
//  2. the block's sector bitmap (over the old footer), then the data;
//  3. a flush, so that all of this and the new length are durable;
//  4. the 4-byte BAT entry, which no crash can tear, makes the block visible.
//
// Until step 4 the block belongs to no BAT entry and the disk reads as it
// did; after it, the block holds the new data and zeros. Space a crash left
// unreferenced is reclaimed by the first write after opening: it writes the
// footer right after the used space, then cuts the file there. Writes into
// allocated blocks go in place. Sync makes every write durable. A disk
// made with DynamicOptions.Unordered (a conversion's temp file, which
// nobody sees until it is complete) skips step 3.
package vhd
