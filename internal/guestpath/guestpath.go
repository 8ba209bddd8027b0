// Package guestpath names the directories of a layervisor utility VM's
// guest (hcsshim's internal/guestpath is the model): where the attachment
// controllers mount what they attach, where containers' directories and
// sandbox:// directories live, and where the agent keeps its own state.
// The host side and the agent both take them from here, and the agent
// serves requests only under AllowedRoots.
package guestpath

import (
	"fmt"
	"path"
)

// Mount points of attachments, one directory per kind, each mount named by
// its controller's counter.
const (
	// Mounts holds every attachment's mount point.
	Mounts = "/run/mounts"
	// SCSIMounts holds the mounted SCSI disks: m<N> (SCSIMount).
	SCSIMounts = Mounts + "/scsi"
	// PmemMounts holds the mounted VPMEM devices: m<N> (PmemMount).
	PmemMounts = Mounts + "/pmem"
	// ShareMounts holds the mounted virtiofs shares: s<N> (ShareMount).
	ShareMounts = Mounts + "/share"
)

// Containers holds each container's directory (ContainerRoot): its
// rootfs, the overlay of its layers, is <ContainerRoot>/rootfs.
const Containers = "/run/c"

// SandboxMounts holds the directories sandbox:// mount sources name. They
// live in the guest's memory and die with the VM.
const SandboxMounts = "/run/sandbox-mounts"

// The agent's own state, never named by a request.
const (
	// Bundles holds the OCI bundles of the containers the agent runs.
	Bundles = "/run/bundles"
	// RuntimeState is the OCI runtime's state directory (its --root).
	RuntimeState = "/run/oci"
	// RuntimeBinary is where the initramfs holds the OCI runtime the agent
	// runs containers with.
	RuntimeBinary = "/usr/bin/oci-runtime"
)

// AllowedRoots are the directories the agent's requests may name (the
// attachments' mount points, containers' directories, sandbox
// directories); the agent creates them at boot. A new slice each call.
// A test that needs another root gives the agent's Server its own list.
func AllowedRoots() []string { return []string{Mounts, Containers, SandboxMounts} }

// SCSIMount is the mount point of the n-th SCSI disk mounted in a VM.
func SCSIMount(n int) string { return fmt.Sprintf("%s/m%d", SCSIMounts, n) }

// PmemMount is the mount point of the n-th VPMEM device mounted in a VM.
func PmemMount(n int) string { return fmt.Sprintf("%s/m%d", PmemMounts, n) }

// ShareMount is the mount point of the n-th virtiofs share of a VM.
func ShareMount(n int) string { return fmt.Sprintf("%s/s%d", ShareMounts, n) }

// ContainerRoot is the directory of container id.
func ContainerRoot(id string) string { return path.Join(Containers, id) }

// Rootfs is the root file system of the container whose directory is
// containerRoot.
func Rootfs(containerRoot string) string { return path.Join(containerRoot, "rootfs") }

// Bundle is the OCI bundle the agent writes for container id.
func Bundle(id string) string { return path.Join(Bundles, id) }
