package cristack

// DigestImageSpec pulls an image pinned by a digest of upstream's, which
// a registry of locally built images cannot serve: excluded for every
// handler.
const DigestImageSpec = "public image with digest should be pulled and removed"

// LayervisorExclusions are the critest v1.37.0 specs the layervisor
// handler does not pass, by design, with the reason (docs/kubernetes.md
// lists them too). A pod is a VM: the host's namespaces are not the
// pod's, and a host directory reaches the guest through virtiofs.
var LayervisorExclusions = map[string]string{
	DigestImageSpec:                                      "environment: the digest-pinned upstream image cannot be rebuilt offline (runc fails it too)",
	"runtime should support HostIpc is true":             "a pod in a VM cannot share the host's IPC namespace (refused: it would be the guest's)",
	"runtime should support HostNetwork is true":         "a pod in a VM cannot use the host's network (refused with a clear error at RunPodSandbox)",
	"runtime should support portforward in host network": "needs a host-network pod (refused)",
	"mount with 'rshared' should support propagation from host to container and vice versa": "mounts made on the host after the share was made do not propagate through virtiofs, nor the guest's back",
	"should support non-recursive readonly mounts":                                          "read-only binds are enforced by the host's virtiofs share, for everything under them: a writable submount of a read-only bind stays read-only",
}
