package layerconv

import (
	"encoding/binary"
	"fmt"
	"os"
)

// fixInodeBitmapPadding sets the bits of each inode bitmap block beyond
// s_inodes_per_group, as mke2fs does and e2fsck checks. tar2ext4 leaves
// them clear. Its images have no metadata checksums, so no checksum needs
// updating.
func fixInodeBitmapPadding(f *os.File) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return fmt.Errorf("read ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return fmt.Errorf("ext4 superblock magic missing in converted layer")
	}
	const (
		incompat64bit   = 0x80
		roCompatCsum    = 0x400 // metadata_csum
		roCompatGdtCsum = 0x10
	)
	if le.Uint32(sb[0x64:])&(roCompatCsum|roCompatGdtCsum) != 0 {
		return fmt.Errorf("ext4 layer image has checksums; padding fix does not support them")
	}
	blockSize := int64(1024) << le.Uint32(sb[0x18:])
	blocksCount := int64(le.Uint32(sb[0x04:]))
	firstDataBlock := int64(le.Uint32(sb[0x14:]))
	blocksPerGroup := int64(le.Uint32(sb[0x20:]))
	inodesPerGroup := int64(le.Uint32(sb[0x28:]))
	descSize := int64(32)
	if le.Uint32(sb[0x60:])&incompat64bit != 0 {
		descSize = int64(le.Uint16(sb[0xFE:]))
	}
	bitsPerBlock := blockSize * 8
	if inodesPerGroup >= bitsPerBlock {
		return nil
	}
	groups := (blocksCount - firstDataBlock + blocksPerGroup - 1) / blocksPerGroup
	gdt := make([]byte, groups*descSize)
	if _, err := f.ReadAt(gdt, (firstDataBlock+1)*blockSize); err != nil {
		return fmt.Errorf("read ext4 group descriptors: %w", err)
	}
	bitmap := make([]byte, blockSize)
	for g := int64(0); g < groups; g++ {
		d := gdt[g*descSize:]
		blk := int64(le.Uint32(d[4:]))
		if descSize >= 64 {
			blk |= int64(le.Uint32(d[0x24:])) << 32
		}
		off := blk * blockSize
		if _, err := f.ReadAt(bitmap, off); err != nil {
			return fmt.Errorf("read inode bitmap of group %d: %w", g, err)
		}
		for bit := inodesPerGroup; bit < bitsPerBlock; bit++ {
			bitmap[bit/8] |= 1 << (bit % 8)
		}
		if _, err := f.WriteAt(bitmap, off); err != nil {
			return fmt.Errorf("write inode bitmap of group %d: %w", g, err)
		}
	}
	return nil
}
