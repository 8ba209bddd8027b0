// Package runspec builds the OCI runtime spec of one `layervisor run` from
// what a container user types: `-v HOST:CONTAINER[:ro]`, `--mount
// type=…,source=…,target=…`, `--spec config.json`, the command, `-e` and
// `-w`. The result is a plain *specs.Spec that both isolation modes take;
// which mounts a mode can honour is decided by that mode, not here.
package runspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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

// DefaultEnv is the environment every run starts from.
var DefaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=xterm"}

// Flags is what the CLI collected.
type Flags struct {
	SpecFile string   // --spec: an OCI runtime spec (config.json); "" for none
	Args     []string // the command after "--"; overrides the spec's process.args
	Env      []string // -e KEY=VALUE, appended after the spec's env
	Cwd      string   // -w; overrides the spec's process.cwd when set
	Volumes  []string // -v HOST:CONTAINER[:OPTS]
	Mounts   []string // --mount k=v,...
}

// Build returns the spec of a run: the spec file's (if any), with the
// command, environment, working directory and mounts from the flags.
func Build(f Flags) (*specs.Spec, error) {
	s := &specs.Spec{Version: specs.Version}
	if f.SpecFile != "" {
		var err error
		if s, err = Load(f.SpecFile); err != nil {
			return nil, err
		}
	}
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	p := s.Process
	if len(f.Args) > 0 {
		p.Args = append([]string(nil), f.Args...)
	}
	if len(p.Args) == 0 {
		return nil, errors.New("no command: give one after \"--\" or in the spec's process.args")
	}
	if len(p.Env) == 0 {
		p.Env = append([]string(nil), DefaultEnv...)
	}
	for _, e := range f.Env {
		if !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return nil, fmt.Errorf("-e %q: want KEY=VALUE", e)
		}
		p.Env = append(p.Env, e)
	}
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
	return s, nil
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
	if s.Process != nil && s.Process.Terminal {
		return nil, fmt.Errorf("spec %s: process.terminal is not supported (layervisor run streams stdio)", file)
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

// ReadOnly reports whether a mount's options ask for read-only.
func ReadOnly(m specs.Mount) bool {
	ro := false
	for _, o := range m.Options {
		switch strings.ToLower(o) {
		case "ro":
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

// RuntimeProvided reports whether a spec mount is one the run sets up by
// itself in both modes (/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys
// and cgroups, as in `runc spec`'s defaults), so it is not mounted again.
func RuntimeProvided(m specs.Mount) bool {
	switch m.Type {
	case "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2":
		return true
	case "tmpfs":
		d := path.Clean(m.Destination)
		return d == "/dev" || d == "/dev/shm"
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
