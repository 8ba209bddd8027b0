package uvm

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/agent"
)

// InitramfsOptions say what goes into the UVM's initramfs.
type InitramfsOptions struct {
	// BootDir holds vmlinuz and lib/modules/<version>/ (depmod run).
	BootDir string `json:"bootDir"`
	// Agent is the guest agent binary; empty finds one (FindAgent).
	Agent string `json:"agent"`
	// Runtime is the OCI runtime the agent runs containers with, packed
	// as guestpath.RuntimeBinary with the libraries it needs; empty finds
	// one (FindGuestRuntime).
	Runtime string `json:"runtime"`
	// Out is the initramfs to write.
	Out string `json:"out"`
}

// initramfsFormat changes when BuildInitramfs lays the image out
// differently for the same inputs.
const initramfsFormat = 1

// DefaultInitrd is the initramfs a UVM of root uses unless told: under
// <root>/boot, named by its inputs (the agent's and the OCI runtime's
// content, the kernel version, the modules the agent loads, the layout),
// so that a new agent or runtime gets an initramfs of its own instead of
// an older one being reused, and nothing has to be renamed by hand.
// Hashes are cached by file identity (inputCache).
func DefaultInitrd(root, bootDir string, host HostOptions) (string, error) {
	agentPath, err := FindAgent(host.Agent)
	if err != nil {
		return "", err
	}
	runtimePath, err := FindGuestRuntime(host.GuestRuntime)
	if err != nil {
		return "", err
	}
	inputs := inputCacheFor(root)
	h := sha256.New()
	fmt.Fprintf(h, "format %d\nmodules %s\n", initramfsFormat, strings.Join(agent.GuestModules, " "))
	kver, _ := os.ReadFile(filepath.Join(bootDir, "kernel-version"))
	fmt.Fprintf(h, "kernel %s\n", strings.TrimSpace(string(kver)))
	for _, f := range []string{agentPath, runtimePath} {
		sum, err := inputs.hash(f)
		if err != nil {
			return "", fmt.Errorf("initramfs input %s: %w", f, err)
		}
		fmt.Fprintf(h, "%s\n", sum)
	}
	return filepath.Join(root, "boot", fmt.Sprintf("initrd-%x.img", h.Sum(nil)[:8])), nil
}

// AgentName is the guest agent's file name (cmd/layervisor-agent).
const AgentName = "layervisor-agent"

// FindAgent locates the guest agent binary that becomes the initramfs's
// /init: path when one is given, else layervisor-agent beside the running
// executable, else on PATH. Nothing here builds it: scripts/demo.sh (the
// README's set-up) builds it beside layervisor and installs it in
// /usr/local/bin, and tests build it in test code.
func FindAgent(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("guest agent: %w", err)
		}
		return path, nil
	}
	var beside string
	if exe, err := os.Executable(); err == nil {
		beside = filepath.Join(filepath.Dir(exe), AgentName)
		if _, err := os.Stat(beside); err == nil {
			return beside, nil
		}
	}
	if p, err := exec.LookPath(AgentName); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no guest agent: %s is neither beside this program (%s) nor on PATH; "+
		"bash scripts/demo.sh installs it in /usr/local/bin, or build it: "+
		"CGO_ENABLED=0 go build -o /usr/local/bin/%s ./cmd/layervisor-agent (or name one: LAYERVISOR_AGENT, uvm image build --agent)",
		AgentName, beside, AgentName)
}

// BuildInitramfs writes a gzip cpio (newc) with the agent as /init and the
// kernel modules it loads, with their dependencies and modules.dep.
func BuildInitramfs(ctx context.Context, o InitramfsOptions) error {
	kver, err := os.ReadFile(filepath.Join(o.BootDir, "kernel-version"))
	if err != nil {
		vers, _ := filepath.Glob(filepath.Join(o.BootDir, "lib", "modules", "*"))
		if len(vers) != 1 {
			return fmt.Errorf("boot dir %s: no kernel-version file and not exactly one lib/modules/<version> (run bash scripts/deps.sh): %w", o.BootDir, err)
		}
		kver = []byte(filepath.Base(vers[0]))
	}
	ver := strings.TrimSpace(string(kver))
	modDir := filepath.Join(o.BootDir, "lib", "modules", ver)
	files, err := moduleFiles(filepath.Join(modDir, "modules.dep"), agent.GuestModules)
	if err != nil {
		return err
	}
	agentPath, err := FindAgent(o.Agent)
	if err != nil {
		return err
	}
	runtimePath, err := FindGuestRuntime(o.Runtime)
	if err != nil {
		return err
	}
	runtimeLibs, err := elfClosure(runtimePath)
	if err != nil {
		return fmt.Errorf("initramfs: OCI runtime: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return err
	}
	// Locked while written: gc removes only the temp files of dead builds.
	tmp, err := atomicfile.CreateTemp(filepath.Dir(o.Out), ".tmp-initramfs-")
	if err != nil {
		return err
	}
	defer tmp.Discard()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	zw, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	cw := &cpioWriter{w: zw, ino: 1}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "lib", "lib/modules", "lib/modules/" + ver} {
		cw.dir(d)
	}
	made := map[string]bool{}
	if err := cw.file("init", agentPath, 0o755); err != nil {
		return fmt.Errorf("initramfs: agent %s: %w", agentPath, err)
	}
	if err := cw.file("lib/modules/"+ver+"/modules.dep", filepath.Join(modDir, "modules.dep"), 0o644); err != nil {
		return err
	}
	for _, f := range files {
		for d := filepath.Dir(f); d != "."; d = filepath.Dir(d) {
			if !made[d] {
				made[d] = true
			}
		}
	}
	for _, d := range sortedDirs(made) {
		cw.dir("lib/modules/" + ver + "/" + d)
	}
	for _, f := range files {
		if err := cw.file("lib/modules/"+ver+"/"+f, filepath.Join(modDir, f), 0o644); err != nil {
			return err
		}
	}
	// The OCI runtime and its libraries, at the paths its loader looks.
	rtDirs := map[string]bool{}
	for _, p := range append([]string{guestpath.RuntimeBinary}, guestPaths(runtimeLibs)...) {
		for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
			rtDirs[d[1:]] = true
		}
	}
	for _, d := range sortedDirs(rtDirs) {
		if d != "lib" { // made above
			cw.dir(d)
		}
	}
	if err := cw.file(guestpath.RuntimeBinary[1:], runtimePath, 0o755); err != nil {
		return fmt.Errorf("initramfs: OCI runtime %s: %w", runtimePath, err)
	}
	for _, l := range runtimeLibs {
		if err := cw.file(l[0][1:], l[1], 0o755); err != nil {
			return fmt.Errorf("initramfs: %s: %w", l[1], err)
		}
	}
	if err := cw.trailer(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return tmp.Publish(o.Out)
}

func guestPaths(files [][2]string) []string {
	var out []string
	for _, f := range files {
		out = append(out, f[0])
	}
	return out
}

func sortedDirs(m map[string]bool) []string {
	out := slices.Collect(maps.Keys(m))
	slices.Sort(out) // parents before children
	return out
}

// moduleFiles returns the module files (relative to the module dir) of
// wanted and of everything they depend on. Built-in modules have no entry.
func moduleFiles(depFile string, wanted []string) ([]string, error) {
	b, err := os.ReadFile(depFile)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (run bash scripts/deps.sh)", err)
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		base := strings.TrimSuffix(filepath.Base(file), ".ko")
		deps[strings.ReplaceAll(base, "-", "_")] = append([]string{file}, strings.Fields(rest)...)
	}
	seen := map[string]bool{}
	var out []string
	for _, w := range wanted {
		for _, f := range deps[w] {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) header(name string, mode uint32, size int) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	_, c.err = io.WriteString(c.w, hdr+name+"\x00")
	c.pad(len(hdr) + len(name) + 1)
}

func (c *cpioWriter) pad(n int) {
	if c.err == nil && n%4 != 0 {
		_, c.err = c.w.Write(make([]byte, 4-n%4))
	}
}

func (c *cpioWriter) dir(name string) { c.header(name, 0o040755, 0) }

func (c *cpioWriter) file(name, src string, perm uint32) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	c.header(name, 0o100000|perm, len(b))
	if c.err == nil {
		_, c.err = c.w.Write(b)
		c.pad(len(b))
	}
	return c.err
}

func (c *cpioWriter) trailer() error {
	c.header("TRAILER!!!", 0, 0)
	if c.err != nil {
		return errors.Join(errors.New("write initramfs"), c.err)
	}
	return nil
}
