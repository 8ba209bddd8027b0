// Package snapshotter makes layervisor's store a containerd snapshotter
// (containerd's core/snapshots.Snapshotter) and differ (core/diff.Applier),
// for serving as proxy plugins (`layervisor serve`). [New] opens the
// snapshotter over a store, [NewDiffer] the differ beside it; [LayerImages]
// maps a snapshot's mount back to the layer images behind it, for a VM
// runtime that attaches them instead of mounting them.
//
// A committed snapshot is a layer image of the store keyed by chain ID, the
// same files `layervisor image import` writes, so images imported either
// way share layers, but only once the chain ID is verified: computed from
// the diff ID of the bytes converted. Content committed under a chain ID
// layervisor did not verify stays private to its snapshot.
//
// A container's active snapshot has its upper and work directories on a
// scratch disk cloned from the store's template (plain directories with
// [WithoutScratch]; [WithScratchPool] keeps clones ready ahead). An unpack
// snapshot (key "extract-…") becomes a layer image at Commit, unless the
// Differ already wrote the layer. Views are read-only. Mounts returns one
// plain overlay (or a bind for a single layer) that runc understands, over
// read-only host mounts of the layer images that the store's host mounts
// (layers.Host) own: one per image, shared by every snapshot of a layer and
// by the store's containers. [RegisterPinner] keeps the snapshots' layers
// from the store's gc, in any process.
//
// [New] reconciles what a crash left (snapshot directories without metadata,
// layer mounts nothing refers to or missing) and runs the store's gc.
// README.md has the on-disk layout, the trust rule in detail and the scratch
// pool.
package snapshotter
