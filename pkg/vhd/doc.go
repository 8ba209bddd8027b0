// Package vhd reads and writes VHD (Virtual Hard Disk v1) files: the
// 512-byte footer that turns a raw image into a fixed VHD
// ([AppendFixedFooter]; layervisor appends it to every read-only layer image,
// layer.vhd; [ReadFooter] and [CheckFile] read it back), and dynamic VHDs,
// which it creates ([CreateDynamic], [FormatDynamic]), reads
// ([OpenDynamic]) and writes ([OpenDynamicRW]). Differencing VHDs are
// refused.
//
// New dynamic VHDs are laid out as QEMU lays them out, and read by QEMU and
// libvhdi.
//
// Consistency: writing keeps the file a valid VHD whether the process dies
// or the machine loses power at any point: a block becomes visible only
// once its data is durable, so an interrupted write leaves the disk reading
// as it did, and space a crash left unreferenced is reclaimed by the first
// write after opening. [Dynamic.Sync] makes every write durable. A disk
// made with [DynamicOptions].Unordered (a conversion's temp file, which
// nobody sees until it is complete) skips the flush that orders a block
// before its BAT entry. README.md has the layout and the write order.
package vhd
