package runspec

import "github.com/containerd/containerd/v2/pkg/cap"

// knownCaps lists the capability names the kernel headers containerd was
// built with know.
func knownCaps() []string { return cap.Known() }
