package hostrun

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// capNumbers maps capability names, as OCI specs spell them, to their
// numbers in linux/capability.h. Kept here rather than taken from
// x/sys/unix so that specs can be checked on every OS.
var capNumbers = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
	"CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
	"CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
	"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
	"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
	"CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
	"CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
	"CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
	"CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
	"CAP_CHECKPOINT_RESTORE": 40,
}

// defaultCaps is the set containerd gives a container that asks for
// nothing (the set Docker documents as its default): no CAP_SYS_ADMIN,
// CAP_SYS_MODULE, CAP_SYS_RAWIO or CAP_NET_ADMIN.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// DefaultCapabilities returns the capabilities a command gets when Options
// names none: defaultCaps in the bounding, effective and permitted sets,
// nothing inheritable or ambient (containerd stopped filling the
// inheritable set in 2022, CVE-2022-24769).
func DefaultCapabilities() *specs.LinuxCapabilities {
	set := func() []string { return append([]string(nil), defaultCaps...) }
	return &specs.LinuxCapabilities{Bounding: set(), Effective: set(), Permitted: set()}
}

// capMasks holds the five capability sets as bit masks (bit n = capability n).
type capMasks struct {
	Bounding, Effective, Permitted, Inheritable, Ambient uint64
}

// parseCaps turns OCI capability sets into masks; an unknown name is an error.
func parseCaps(c *specs.LinuxCapabilities) (capMasks, error) {
	var m capMasks
	for _, s := range []struct {
		name  string
		names []string
		mask  *uint64
	}{
		{"bounding", c.Bounding, &m.Bounding},
		{"effective", c.Effective, &m.Effective},
		{"permitted", c.Permitted, &m.Permitted},
		{"inheritable", c.Inheritable, &m.Inheritable},
		{"ambient", c.Ambient, &m.Ambient},
	} {
		for _, n := range s.names {
			bit, ok := capNumbers[n]
			if !ok {
				return capMasks{}, fmt.Errorf("hostrun: %s capability %q: unknown capability", s.name, n)
			}
			*s.mask |= 1 << bit
		}
	}
	return m, nil
}
