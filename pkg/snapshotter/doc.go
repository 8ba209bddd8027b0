// Package snapshotter makes layervisor's store a containerd snapshotter
// (containerd's core/snapshots.Snapshotter) and differ (core/diff.Applier),
// for serving as proxy plugins (`layervisor serve`).
//
// A committed snapshot is a layer image of the store keyed by chain ID — the
// same files `layervisor image import` writes, so images imported either
// way share layers — but only once the chain ID is verified: computed from
// the diff ID of the bytes converted (the differ, image import, a commit
// named after its own content). Anyone who reaches containerd can commit a
// directory under a real layer's chain ID; such content stays private to
// its snapshot, under a random key no other snapshot or namespace looks
// up (see Snapshotter.commitLayer).
//
// A container's active snapshot has its upper and work directories on a
// scratch disk cloned from the store's template (or plain directories,
// WithoutScratch); an unpack snapshot (key "extract-…") is a directory pair
// whose content becomes a layer image at Commit, which is how containerd
// 1.6 unpacks (its walking differ extracts into it), unless the Differ
// already wrote the layer. Views are read-only mounts. Metadata (keys,
// parents, labels) lives in containerd's core/snapshots/storage bolt store.
//
// Host mounts: every layer is loop-mounted read-only once, at
// snapshots/l/<first 16 hex of its chain ID> (the full chain ID if another
// layer holds that name; see layerMount), shared by every snapshot of
// that layer and unmounted when the last one goes; Mounts returns one plain
// overlay (or a bind for a single layer) that runc understands. The lower
// directories are <mount>/content of layer images in the store; LayerImages
// maps such a mount back to the layers/<chain-id>/layer.vhd files behind it,
// for a VM runtime that attaches them instead.
//
// Layout under <store root>/snapshots:
//
//	metadata.db        containerd snapshot metadata (bolt)
//	<id>/fs, <id>/work upper and work directory of an unpack snapshot or view
//	<id>/sandbox.img   scratch disk of a container's snapshot, mounted at <id>/mnt
//	                   (upper and work directories inside)
//	<id>/layer         chain ID (or private key) of a committed snapshot's layer (keeps it from gc)
//	l/<hex16 or hex64> read-only mount of a layer image
//	new-*              snapshot being created (removed at start if left)
//
// New reconciles what a crash left: directories without metadata are
// removed, layer mounts nothing refers to (or holding another image than
// their snapshots', as the kernel tells) are unmounted, missing ones are
// mounted again, and store.GC runs.
package snapshotter
