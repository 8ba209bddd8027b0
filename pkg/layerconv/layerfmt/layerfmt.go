// Package layerfmt names the on-disk layout of a layer image, for the code
// that mounts one (the host and the guest agent). It has no dependencies, so
// the guest agent can use it without pulling in the ext4 writer.
package layerfmt

import "path"

// ContentDir is the directory at the root of a layer image's file system
// that holds the layer's content; the root itself also holds lost+found,
// which e2fsck wants and the container must not see.
const ContentDir = "content"

// Version is the layer image format written by layerconv. Version 1 (no
// version recorded) held the content at the image root.
const Version = 2

// LowerDir is the overlay lower directory of a layer image mounted at mnt.
func LowerDir(mnt string) string { return path.Join(mnt, ContentDir) }
