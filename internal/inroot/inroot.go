// Package inroot resolves what an OCI spec names inside a container's root
// file system before the container starts: the user (a name, uid,
// name:group…) through the root's /etc/passwd and /etc/group, with its
// supplementary groups, and the command through the process's PATH. Every
// path is opened with RESOLVE_IN_ROOT, so an image's symlinks cannot make
// the host read its own files. The CLI calls it on the host; the guest agent
// calls it in the utility VM, where the root is.
package inroot

import (
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// UserAnnotation carries an unresolved user ("name", "uid", "name:group",
// "uid:gid") from the spec's builder to Resolve; Resolve removes it.
const UserAnnotation = "org.layervisor.user"

// maxAccountFile bounds how much of /etc/passwd or /etc/group is read: an
// image controls them.
const maxAccountFile = 4 << 20

// ErrNotFound marks a user or group the root does not have.
var ErrNotFound = errors.New("not found in the container's root")

// ErrCommandNotFound marks a command the root does not have (exit code 127
// in a shell's words).
var ErrCommandNotFound = errors.New("not found in the container's root")

// Root is a container's root file system.
type Root interface {
	// Open opens name (absolute, inside the root) for reading, resolving
	// every component inside the root.
	Open(name string) (io.ReadCloser, error)
	// Executable reports whether name is a regular file with an execute bit.
	Executable(name string) bool
}

// Resolve fills spec.Process.User from the user annotation and checks that
// the command exists in the root.
func Resolve(spec *specs.Spec, root Root) error {
	p := spec.Process
	if u, ok := spec.Annotations[UserAnnotation]; ok {
		delete(spec.Annotations, UserAnnotation)
		if err := resolveUser(p, u, root); err != nil {
			return err
		}
	}
	return checkCommand(p, root)
}

func resolveUser(p *specs.Process, spec string, root Root) error {
	users, err := readAccounts(root, "/etc/passwd", user.ParsePasswd)
	if err != nil {
		return err
	}
	groups, err := readAccounts(root, "/etc/group", user.ParseGroup)
	if err != nil {
		return err
	}
	var pw, gr strings.Builder
	for _, u := range users {
		fmt.Fprintf(&pw, "%s:x:%d:%d:%s:%s:%s\n", u.Name, u.Uid, u.Gid, u.Gecos, u.Home, u.Shell)
	}
	for _, g := range groups {
		fmt.Fprintf(&gr, "%s:x:%d:%s\n", g.Name, g.Gid, strings.Join(g.List, ","))
	}
	u, err := user.GetExecUser(spec, &user.ExecUser{Home: "/"}, strings.NewReader(pw.String()), strings.NewReader(gr.String()))
	if err != nil {
		return fmt.Errorf("user %q: %w: %v", spec, ErrNotFound, err)
	}
	p.User.UID, p.User.GID = uint32(u.Uid), uint32(u.Gid)
	p.User.AdditionalGids = nil
	if strings.Contains(spec, ":") {
		// An explicit group replaces the supplementary ones (runc's rule).
		for _, g := range u.Sgids {
			if uint32(g) != p.User.GID {
				p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(g))
			}
		}
	} else {
		// containerd's rule: every group that lists the user by name or is
		// its primary group, in /etc/group's order.
		name := ""
		for _, e := range users {
			if e.Uid == u.Uid {
				name = e.Name
				break
			}
		}
		for _, g := range groups {
			if g.Gid == u.Gid || (name != "" && slices.Contains(g.List, name)) {
				p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(g.Gid))
			}
		}
	}
	// HOME follows the user unless the image or the caller set it.
	if !hasEnv(p.Env, "HOME") {
		p.Env = append(p.Env, "HOME="+u.Home)
	}
	return nil
}

// readAccounts parses an account file of the root; a missing one is empty
// (numeric users work without it).
func readAccounts[T any](root Root, name string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	f, err := openBounded(root, name)
	if err != nil || f == nil {
		return nil, err
	}
	defer f.Close()
	out, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("read %s in the container: %w", name, err)
	}
	return out, nil
}

// openBounded opens an account file; a missing one is nil (numeric users
// work without it).
func openBounded(root Root, name string) (io.ReadCloser, error) {
	f, err := root.Open(name)
	if err != nil {
		if errors.Is(err, errNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s in the container: %w", name, err)
	}
	return &boundedReader{ReadCloser: f, name: name, left: maxAccountFile}, nil
}

type boundedReader struct {
	io.ReadCloser
	name string
	left int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("%s in the container is larger than %d bytes", b.name, maxAccountFile)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

func envValue(env []string, key string) string {
	v := ""
	for _, e := range env {
		if s, ok := strings.CutPrefix(e, key+"="); ok {
			v = s
		}
	}
	return v
}

// checkCommand finds the command as the runtime's exec will: a name with a
// slash is taken relative to the working directory, others on PATH.
func checkCommand(p *specs.Process, root Root) error {
	if len(p.Args) == 0 {
		return errors.New("no command: the image has no Entrypoint or Cmd, and none was given")
	}
	name := p.Args[0]
	if strings.Contains(name, "/") {
		full := name
		if !path.IsAbs(full) {
			full = path.Join(p.Cwd, full)
		}
		if root.Executable(full) {
			return nil
		}
		return fmt.Errorf("command %q: %w (or not executable)", name, ErrCommandNotFound)
	}
	for _, dir := range strings.Split(envValue(p.Env, "PATH"), ":") {
		if dir == "" || !path.IsAbs(dir) {
			continue
		}
		if root.Executable(path.Join(dir, name)) {
			return nil
		}
	}
	return fmt.Errorf("command %q: %w (PATH=%s)", name, ErrCommandNotFound, envValue(p.Env, "PATH"))
}
