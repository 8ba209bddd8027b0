package share

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// The virtiofsd daemons layervisor knows, in order of preference.
const (
	// RustVirtiofsd is the Rust daemon (the virtiofsd package of Debian
	// 13 and later, Fedora, Ubuntu; QEMU 8.0 dropped the C one). Debian 12
	// does not ship it, not even in bookworm-backports.
	RustVirtiofsd = "/usr/libexec/virtiofsd"
	// CVirtiofsd is QEMU's C daemon, shipped by Debian 12's
	// qemu-system-common 7.2.
	CVirtiofsd = "/usr/lib/qemu/virtiofsd"
)

// DefaultVirtiofsd is the daemon NewQEMUHost uses when given none: the
// Rust one where it is installed, else the C one.
func DefaultVirtiofsd() string {
	if _, err := os.Stat(RustVirtiofsd); err == nil {
		return RustVirtiofsd
	}
	return CVirtiofsd
}

// A flavour of virtiofsd: the two take different options.
type flavour struct {
	rust     bool
	readOnly bool // the Rust daemon's --readonly (1.7 and later)
}

// flavours caches what each daemon's --help said, by path and file
// identity (a --help costs a process start).
var flavours sync.Map // string -> flavour

// flavourOf asks the daemon at path for its --help (through any wrapper
// script) and tells the Rust daemon from the C one.
func flavourOf(ctx context.Context, path string) (flavour, error) {
	st, err := os.Stat(path)
	if err != nil {
		return flavour{}, err
	}
	key := fmt.Sprintf("%s\x00%d\x00%d", path, st.Size(), st.ModTime().UnixNano())
	if f, ok := flavours.Load(key); ok {
		return f.(flavour), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, path, "--help").CombinedOutput() // exit status varies by version
	help := string(out)
	var f flavour
	switch {
	case strings.Contains(help, "--shared-dir"):
		f = flavour{rust: true, readOnly: strings.Contains(help, "--readonly")}
	case strings.Contains(help, "source=PATH"):
		f = flavour{}
	default:
		return flavour{}, fmt.Errorf("virtiofsd %s: not a virtiofsd layervisor knows (its --help names neither --shared-dir nor -o source=PATH): %q", path, firstLine(help))
	}
	flavours.Store(key, f)
	return f, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// args is the daemon's command line, serving source on the listening
// socket at fd 3. Both daemons: their own mount, PID and network
// namespaces with the shared directory as root (sandbox=namespace), a
// seccomp filter that kills on a system call outside their list (the C
// daemon always has it), and no CAP_MKNOD (a guest could otherwise make
// device nodes in a host directory, which a host process could open).
// A read-only share is a read-only bind mount (see readOnlyView); the Rust
// daemon also refuses the guest's writes itself where it can (--readonly).
// Inodes stay O_PATH descriptors (the Rust daemon's --inode-file-handles
// would need CAP_DAC_READ_SEARCH).
func (f flavour) args(source string, readOnly bool) []string {
	if !f.rust {
		return []string{"--fd=3", "-o", "source=" + source, "-o", "cache=auto", "-o", "log_level=warn",
			"-o", "modcaps=-mknod", "-o", "sandbox=namespace"}
	}
	a := []string{"--fd=3", "--shared-dir=" + source, "--cache=auto", "--log-level=warn",
		"--modcaps=-mknod", "--sandbox=namespace", "--seccomp=kill"}
	if readOnly && f.readOnly {
		a = append(a, "--readonly")
	}
	return a
}
