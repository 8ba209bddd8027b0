// Package runspec builds the OCI runtime spec of one `layervisor run` from
// what a container user types: `-v HOST:CONTAINER[:ro]`, `--mount
// type=…,source=…,target=…`, `--spec config.json`, the command, `-e` and
// `-w`. The result is a plain *specs.Spec that both isolation modes take;
// which mounts a mode can honour is decided by that mode, not here.
package runspec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/inroot"
)

// Mount types layervisor handles itself. Sandbox mounts are binds whose
// source is SandboxPrefix + a path relative to the UVM's sandbox root, the
// form hcsshim uses.
const (
	TypeBind         = "bind"
	TypePhysicalDisk = "physical-disk"
	TypeVirtualDisk  = "virtual-disk"
	SandboxPrefix    = "sandbox://"
)

// FormatOption is the mount option that names a virtual disk's format
// ("format=raw|vhd|vhdx"); without it the format comes from the file name.
const FormatOption = "format="

// DefaultPath is the PATH of a run whose image sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// SpecVersion is the ociVersion of the specs Build makes.
const SpecVersion = "1.0.2"

// Flags is what the CLI collected.
type Flags struct {
	ID       string               // the container's id: cgroup path, default hostname
	Image    *ocispec.ImageConfig // the image's config (nil: none)
	SpecFile string               // --spec: an OCI runtime spec (config.json); "" for none
	Args     []string             // the command after "--": replaces the image's Cmd
	Env      []string             // -e KEY=VALUE: replaces or adds
	Cwd      string               // -w
	Volumes  []string             // -v HOST:CONTAINER[:OPTS]
	Mounts   []string             // --mount k=v,...
	Confinement
}

// Build returns the spec of a run, in the precedence of ctr and nerdctl:
// containerd's default spec (oci.WithDefaultSpec, its default /dev
// nodes) with containerd's default seccomp profile, then the image's
// config (Entrypoint + Cmd, Env, WorkingDir, User), then the spec file,
// then the flags. The user stays a name until inroot.Resolve reads the
// container's /etc/passwd and /etc/group.
func Build(f Flags) (*specs.Spec, error) {
	id := f.ID
	if id == "" {
		id = "layervisor"
	}
	ctx := namespaces.WithNamespace(context.Background(), CgroupParent)
	var s specs.Spec
	c := &containers.Container{ID: id}
	if err := oci.ApplyOpts(ctx, nil, c, &s, oci.WithDefaultSpec(), oci.WithDefaultUnixDevices); err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	// The oldest version the runtimes we drive accept (runc 1.1 refuses
	// newer ones); nothing the run sets needs more.
	s.Version = SpecVersion
	s.Hostname = id
	p := s.Process
	p.Env = []string{DefaultPath}
	user := ""
	if img := f.Image; img != nil {
		p.Env = replaceEnv(p.Env, img.Env)
		p.Args = append(append([]string(nil), img.Entrypoint...), img.Cmd...)
		if img.WorkingDir != "" {
			p.Cwd = img.WorkingDir
		}
		user = img.User
	}
	if f.SpecFile != "" {
		file, err := Load(f.SpecFile)
		if err != nil {
			return nil, err
		}
		if user, err = applySpecFile(&s, file, user); err != nil {
			return nil, fmt.Errorf("spec %s: %w", f.SpecFile, err)
		}
	}
	if len(f.Args) > 0 {
		var entry []string
		if f.Image != nil && f.SpecFile == "" {
			entry = f.Image.Entrypoint
		}
		p.Args = append(append([]string(nil), entry...), f.Args...)
	}
	if len(p.Args) == 0 {
		return nil, errors.New("no command: the image has no Entrypoint or Cmd; give one after \"--\" or in the spec's process.args")
	}
	for _, e := range f.Env {
		if !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return nil, fmt.Errorf("-e %q: want KEY=VALUE", e)
		}
	}
	p.Env = replaceEnv(p.Env, f.Env)
	if f.Cwd != "" {
		p.Cwd = f.Cwd
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if !path.IsAbs(p.Cwd) {
		return nil, fmt.Errorf("working directory %q is not an absolute path", p.Cwd)
	}
	for _, v := range f.Volumes {
		m, err := ParseVolume(v)
		if err != nil {
			return nil, err
		}
		s.Mounts = append(s.Mounts, m)
	}
	for _, v := range f.Mounts {
		m, err := ParseMount(v)
		if err != nil {
			return nil, err
		}
		s.Mounts = append(s.Mounts, m)
	}
	if f.User != "" {
		user = f.User
	}
	if user == "" {
		user = "0" // root, with root's supplementary groups, as containerd does
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[inroot.UserAnnotation] = user
	if err := f.Confinement.apply(ctx, c, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// applySpecFile takes from a user's spec file what a run honours: the
// process (args, env, cwd, user, terminal, capabilities), its mounts
// (those the runtime makes anyway are skipped), hostname, read-only root
// and resources. It returns the user to resolve.
func applySpecFile(s, file *specs.Spec, user string) (string, error) {
	if fp := file.Process; fp != nil {
		p := s.Process
		if len(fp.Args) > 0 {
			p.Args = append([]string(nil), fp.Args...)
		}
		p.Env = replaceEnv(p.Env, fp.Env)
		if fp.Cwd != "" {
			p.Cwd = fp.Cwd
		}
		if fp.User.UID != 0 || fp.User.GID != 0 {
			user = fmt.Sprintf("%d:%d", fp.User.UID, fp.User.GID)
		}
		p.Terminal = p.Terminal || fp.Terminal
		if fp.Capabilities != nil {
			p.Capabilities = fp.Capabilities
		}
	}
	for _, m := range file.Mounts {
		if !RuntimeProvided(m) {
			s.Mounts = append(s.Mounts, m)
		}
	}
	if file.Hostname != "" {
		s.Hostname = file.Hostname
	}
	if file.Root != nil && file.Root.Readonly {
		s.Root.Readonly = true
	}
	if file.Linux != nil && file.Linux.Resources != nil {
		r := file.Linux.Resources
		r.Devices = s.Linux.Resources.Devices // the device cgroup stays the default's
		s.Linux.Resources = r
	}
	return user, nil
}

// replaceEnv sets each KEY=VALUE of overrides in env, replacing an entry
// of the same key in place or appending.
func replaceEnv(env, overrides []string) []string {
	out := append([]string(nil), env...)
	for _, o := range overrides {
		key, _, _ := strings.Cut(o, "=")
		replaced := false
		for i, e := range out {
			if k, _, _ := strings.Cut(e, "="); k == key {
				out[i] = o
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	return out
}

// Load reads an OCI runtime spec and checks the fields a run uses.
func Load(file string) (*specs.Spec, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("spec %s: %w", file, err)
	}
	for i, m := range s.Mounts {
		if err := checkDestination(m.Destination); err != nil {
			return nil, fmt.Errorf("spec %s: mounts[%d]: %w", file, i, err)
		}
	}
	return &s, nil
}

// ParseVolume parses `-v HOST:CONTAINER[:OPTS]` (OPTS: ro or rw) into a bind
// mount. HOST must be an absolute path; it is checked when the mount is set up.
func ParseVolume(v string) (specs.Mount, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return specs.Mount{}, fmt.Errorf("-v %q: want HOST:CONTAINER[:ro|rw]", v)
	}
	m := specs.Mount{Type: TypeBind, Source: parts[0], Destination: parts[1], Options: []string{"rbind"}}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.Options = append(m.Options, "ro")
		case "rw", "":
		default:
			return specs.Mount{}, fmt.Errorf("-v %q: unknown option %q (want ro or rw)", v, parts[2])
		}
	}
	if !filepath.IsAbs(m.Source) {
		return specs.Mount{}, fmt.Errorf("-v %q: host path %q is not absolute", v, m.Source)
	}
	if err := checkDestination(m.Destination); err != nil {
		return specs.Mount{}, fmt.Errorf("-v %q: %w", v, err)
	}
	return m, nil
}

// ParseMount parses `--mount type=T,source=S,target=D[,readonly][,format=F]`.
// T is bind (default), physical-disk, virtual-disk or sandbox; src and dst
// are accepted for source and target, ro for readonly.
func ParseMount(v string) (specs.Mount, error) {
	typ, ro := TypeBind, false
	var src, dst, format string
	bad := func(format string, a ...any) (specs.Mount, error) {
		return specs.Mount{}, fmt.Errorf("--mount %q: %s", v, fmt.Sprintf(format, a...))
	}
	for _, kv := range strings.Split(v, ",") {
		k, val, hasVal := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "type":
			typ = val
		case "source", "src":
			src = val
		case "target", "destination", "dst":
			dst = val
		case "readonly", "ro":
			if !hasVal {
				ro = true
				break
			}
			switch strings.ToLower(val) {
			case "true", "1":
				ro = true
			case "false", "0":
				ro = false
			default:
				return bad("readonly=%q: want true or false", val)
			}
		case "format":
			format = val
		default:
			return bad("unknown key %q (want type, source, target, readonly, format)", k)
		}
	}
	if src == "" || dst == "" {
		return bad("needs source= and target=")
	}
	if err := checkDestination(dst); err != nil {
		return bad("%v", err)
	}
	m := specs.Mount{Source: src, Destination: dst}
	switch typ {
	case TypeBind:
		if !filepath.IsAbs(src) {
			return bad("bind source %q is not an absolute host path", src)
		}
		m.Type, m.Options = TypeBind, []string{"rbind"}
	case "sandbox":
		if err := checkSandboxPath(src); err != nil {
			return bad("%v", err)
		}
		m.Type, m.Source, m.Options = TypeBind, SandboxPrefix+src, []string{"rbind"}
	case TypePhysicalDisk, TypeVirtualDisk:
		if !filepath.IsAbs(src) {
			return bad("%s source %q is not an absolute host path", typ, src)
		}
		m.Type = typ
	default:
		return bad("unknown type %q (want bind, physical-disk, virtual-disk or sandbox)", typ)
	}
	if format != "" {
		if typ != TypeVirtualDisk {
			return bad("format= applies to type=virtual-disk only")
		}
		switch format {
		case "raw", "vhd", "vhdx":
		default:
			return bad("format %q: want raw, vhd or vhdx", format)
		}
		m.Options = append(m.Options, FormatOption+format)
	}
	if ro {
		m.Options = append(m.Options, "ro")
	}
	return m, nil
}

// ReadOnly reports whether a mount's options ask for read-only ("rro",
// recursive read-only, included).
func ReadOnly(m specs.Mount) bool {
	ro := false
	for _, o := range m.Options {
		switch strings.ToLower(o) {
		case "ro", "rro":
			ro = true
		case "rw":
			ro = false
		}
	}
	return ro
}

// DiskFormat returns a virtual disk's format: the format= option, else the
// file name's extension (.vhdx, .vhd), else raw. It never looks at the
// content: a disk a guest can write must not decide how the host opens it.
func DiskFormat(m specs.Mount) string {
	for _, o := range m.Options {
		if f, ok := strings.CutPrefix(o, FormatOption); ok {
			return f
		}
	}
	switch strings.ToLower(filepath.Ext(m.Source)) {
	case ".vhdx":
		return "vhdx"
	case ".vhd":
		return "vhd"
	}
	return "raw"
}

// RuntimeProvided reports whether a spec mount is one the OCI runtime
// makes itself — the kernel file systems of containerd's and runc's
// default specs (proc, sysfs, tmpfs, devpts, mqueue, cgroup) — so it stays
// in the spec the runtime gets. Binds, sandbox:// binds and disks are
// layervisor's to provide; any other type is refused by the mode.
func RuntimeProvided(m specs.Mount) bool {
	if strings.HasPrefix(m.Source, SandboxPrefix) {
		return false
	}
	switch m.Type {
	case "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2":
		return true
	}
	return false
}

// checkDestination accepts absolute container paths without "..", not "/".
func checkDestination(d string) error {
	if !path.IsAbs(d) {
		return fmt.Errorf("destination %q is not an absolute path", d)
	}
	for _, part := range strings.Split(d, "/") {
		if part == ".." {
			return fmt.Errorf("destination %q contains \"..\"", d)
		}
	}
	if path.Clean(d) == "/" {
		return fmt.Errorf("destination %q would replace the root", d)
	}
	return nil
}

// checkSandboxPath accepts relative paths that stay inside the sandbox root.
func checkSandboxPath(p string) error {
	if p == "" || path.IsAbs(p) {
		return fmt.Errorf("sandbox source %q must be a relative path", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return fmt.Errorf("sandbox source %q escapes the sandbox root", p)
		}
	}
	return nil
}
