// Package cristack runs a Kubernetes CRI test stack on this machine: a
// private containerd 2.4.2 with its CRI plugin, inside a network namespace
// of its own, with CNI (bridge, host-local, portmap, loopback), a loopback
// image registry serving the images critest pulls (built here from
// Debian's busybox and a small helper program), and crictl and critest
// pointed at it. Runtime handlers: "runc" (the default: containerd's runc
// shim driving Debian's runc) and, when given the shim, "layervisor".
//
// Nothing leaves the machine: the registry, containerd's streaming server
// and every pod address live in the stack's network namespace, and
// containerd resolves registry.k8s.io, k8s.gcr.io, gcr.io and docker.io
// to the loopback registry only (hosts.toml). Stop removes everything:
// pods, shims, containers, mounts, the namespace (with its iptables rules)
// and the stack's directory.
//
// From a test, for the layervisor handler (bin holds layervisor,
// containerd-shim-layervisor-v1 and layervisor-agent; root is a store
// root that outlives the stack):
//
//	s := cristack.StartTest(t, cristack.Options{
//		LayervisorBin: filepath.Join(bin, "layervisor"), ShimDir: bin, Root: root})
//	id, err := s.Crictl(ctx, "runp", "--runtime", cristack.HandlerLayervisor, "pod.json")
//	r, err := s.Critest(ctx, "-runtime-handler="+cristack.HandlerLayervisor)
//	t.Logf("critest: %s\n%s", r, r.Failures())
package cristack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/mountinfo"
)

// RegistryAddr is the loopback registry's address inside the stack's
// network namespace.
const RegistryAddr = "127.0.0.1:5000"

// Handler names the stack configures in containerd's CRI.
const (
	HandlerRunc       = "runc"
	HandlerLayervisor = "layervisor"
)

// Names of the layervisor shim (pkg/shim's RuntimeName, BinaryName and
// RootEnv).
const (
	layervisorRuntime = "io.containerd.layervisor.v1"
	layervisorShim    = "containerd-shim-layervisor-v1"
	layervisorRootEnv = "LAYERVISOR_ROOT"
)

// PodSubnet is the pods' subnet on the stack's bridge (inside its
// network namespace only).
const PodSubnet = "10.88.0.0/24"

// Options configure Start. The zero value is a runc-only stack on
// containerd's overlayfs snapshotter.
type Options struct {
	// Dir holds everything of the stack (default: a new /var/tmp/lvcri-*,
	// removed by Stop). Keep it short: sockets live in it.
	Dir string
	// LayervisorBin is the layervisor binary. When set, the stack runs
	// `layervisor serve` on Root as containerd's snapshotter and differ
	// (proxy plugins "layervisor" and "layervisor-diff"), and images
	// unpack into it.
	LayervisorBin string
	// ShimDir holds containerd-shim-layervisor-v1 (put first on
	// containerd's PATH). When set, CRI has the runtime handler
	// "layervisor" (needs LayervisorBin).
	ShimDir string
	// Root is layervisor's store root (serve's --root, and the shims'
	// LAYERVISOR_ROOT). Required with LayervisorBin.
	Root string
	// BootDir is LAYERVISOR_BOOT_DIR for the shims (default: the
	// environment's, else /var/cache/layervisor/boot).
	BootDir string
	// Snapshotter is the snapshotter of the runc handler and of image
	// pulls: "layervisor" (the default with LayervisorBin) or "overlayfs"
	// (the default without). The layervisor handler always uses
	// layervisor's.
	Snapshotter string
	// Env is added to the environment of containerd and its shims.
	Env []string
	// ToolsDir holds crictl and critest, CNIDir the CNI plugins (defaults:
	// ToolsDir() and CNIDir(), where scripts/deps.sh builds them).
	ToolsDir, CNIDir string
	// Logf, when set, reports progress (t.Logf).
	Logf func(format string, args ...any)
}

// ToolsDir is where scripts/deps.sh builds crictl and critest v1.37.0
// (LAYERVISOR_CRI_TOOLS_DIR overrides it).
func ToolsDir() string {
	if d := os.Getenv("LAYERVISOR_CRI_TOOLS_DIR"); d != "" {
		return d
	}
	return "/var/cache/layervisor/cri-tools-v1.37.0"
}

// CNIDir is where scripts/deps.sh builds the CNI plugins v1.10.0
// (LAYERVISOR_CNI_DIR overrides it).
func CNIDir() string {
	if d := os.Getenv("LAYERVISOR_CNI_DIR"); d != "" {
		return d
	}
	return "/var/cache/layervisor/cni-plugins-v1.10.0"
}

// Missing names what the stack needs that this machine lacks (tools,
// binaries); empty when Start can run.
func Missing(o Options) []string {
	o.defaults()
	var miss []string
	for _, t := range []string{"ip", "nsenter", "iptables", "busybox", "go", "runc"} {
		if _, err := exec.LookPath(t); err != nil {
			miss = append(miss, t+" (not in PATH)")
		}
	}
	for _, f := range []string{
		filepath.Join(containerdtest.Containerd2Dir(), "containerd"),
		filepath.Join(containerdtest.Containerd2Dir(), "ctr"),
		filepath.Join(containerdtest.Containerd2Dir(), "containerd-shim-runc-v2"),
		filepath.Join(o.ToolsDir, "crictl"), filepath.Join(o.ToolsDir, "critest"),
		filepath.Join(o.CNIDir, "bridge"), filepath.Join(o.CNIDir, "host-local"),
		filepath.Join(o.CNIDir, "loopback"), filepath.Join(o.CNIDir, "portmap"),
		BusyboxPath(),
	} {
		if _, err := os.Stat(f); err != nil {
			miss = append(miss, f)
		}
	}
	if o.ShimDir != "" {
		if _, err := os.Stat(filepath.Join(o.ShimDir, layervisorShim)); err != nil {
			miss = append(miss, filepath.Join(o.ShimDir, layervisorShim))
		}
	}
	return miss
}

func (o *Options) defaults() {
	if o.ToolsDir == "" {
		o.ToolsDir = ToolsDir()
	}
	if o.CNIDir == "" {
		o.CNIDir = CNIDir()
	}
	if o.Snapshotter == "" {
		o.Snapshotter = "overlayfs"
		if o.LayervisorBin != "" {
			o.Snapshotter = "layervisor"
		}
	}
	if o.BootDir == "" {
		o.BootDir = os.Getenv("LAYERVISOR_BOOT_DIR")
	}
	if o.BootDir == "" {
		o.BootDir = "/var/cache/layervisor/boot"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Stack is a running CRI stack.
type Stack struct {
	// Dir holds the stack's files: containerd/ (its root, state, socket,
	// config and containerd.log), registry/, cni/, runc/, tmp/, logs.
	Dir string
	// NetNS is the name of the stack's network namespace
	// (/var/run/netns/NetNS).
	NetNS string
	// Containerd is the daemon (ctr: Containerd.CtrIn(ctx, "k8s.io", ...)).
	Containerd *containerdtest.Daemon

	o        Options
	ownDir   bool
	reg      *registry
	serve    *exec.Cmd
	serveEnd chan struct{}
	runs     int // critest runs, for file names
	stopped  bool
}

// NRISocket is containerd's NRI socket (critest's -nri-socket).
func (s *Stack) NRISocket() string { return filepath.Join(s.Dir, "nri", "nri.sock") }

// Endpoint is containerd's CRI endpoint (unix://…).
func (s *Stack) Endpoint() string { return "unix://" + s.Containerd.Socket }

// Registry is the loopback registry's address as an image prefix: pull
// Registry()+"/repo:tag" for an image given to Push. Upstream names
// (registry.k8s.io/…, gcr.io/…) resolve to the same registry.
func (s *Stack) Registry() string { return RegistryAddr }

// Push serves im in the loopback registry as repoTag ("lv/demo:1"; the
// tag defaults to latest) and returns the reference to pull it by
// (Registry()+"/"+repoTag). Its name under a mirrored host works too
// (docker.io/lv/demo:1).
func (s *Stack) Push(repoTag string, im imagebuild.Image) (string, error) {
	repo, tag := repoTag, "latest"
	if i := strings.LastIndexByte(repoTag, ':'); i > strings.LastIndexByte(repoTag, '/') {
		repo, tag = repoTag[:i], repoTag[i+1:]
	}
	if _, err := s.reg.add(repo, tag, im); err != nil {
		return "", err
	}
	return RegistryAddr + "/" + repo + ":" + tag, nil
}

// Start starts a stack. On error nothing of it is left.
func Start(ctx context.Context, o Options) (stack *Stack, err error) {
	o.defaults()
	if miss := Missing(o); len(miss) > 0 {
		return nil, fmt.Errorf("cristack: missing %s (bash scripts/deps.sh)", strings.Join(miss, ", "))
	}
	if o.LayervisorBin != "" && o.Root == "" {
		return nil, errors.New("cristack: LayervisorBin needs Root")
	}
	if o.ShimDir != "" && (o.LayervisorBin == "" || o.Snapshotter != "layervisor") {
		// critest and crictl pull without a runtime handler: images unpack
		// into the default snapshotter, which must be the handler's.
		return nil, errors.New("cristack: the layervisor handler (ShimDir) needs LayervisorBin and Snapshotter layervisor")
	}
	for _, e := range o.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || strings.ContainsAny(k, " '\"$\n") {
			return nil, fmt.Errorf("cristack: bad environment entry %q", e)
		}
	}
	s := &Stack{o: o, Dir: o.Dir}
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("/var/tmp", "lvcri-"); err != nil {
			return nil, err
		}
		s.ownDir = true
	}
	defer func() {
		if err != nil {
			if serr := s.Stop(); serr != nil {
				o.Logf("cristack: stop after failed start: %v", serr)
			}
			stack = nil
		}
	}()
	for _, d := range []string{"bin", "tmp", "runc", "cni/net.d", "cni/ipam", "certs.d", "nri"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			return s, err
		}
	}
	start := time.Now()
	if s.NetNS, err = addNetns(); err != nil {
		return s, err
	}
	if err := s.startRegistry(); err != nil {
		return s, err
	}
	o.Logf("cristack: netns %s, registry with critest's images ready in %s", s.NetNS, time.Since(start).Round(time.Millisecond))
	if err := s.writeConfigs(); err != nil {
		return s, err
	}
	sock := filepath.Join(s.Dir, "lv.sock")
	ctrdDir := filepath.Join(s.Dir, "containerd")
	if o.LayervisorBin != "" {
		if err := s.startServe(sock, filepath.Join(ctrdDir, "root", "io.containerd.content.v1.content")); err != nil {
			return s, err
		}
	}
	wrapper, err := s.writeWrapper()
	if err != nil {
		return s, err
	}
	c2 := containerdtest.Containerd2Dir()
	s.Containerd, err = containerdtest.StartWith(ctx, ctrdDir, containerdtest.Options{
		Bin: wrapper, Ctr: filepath.Join(c2, "ctr"), Config: s.containerdConfig(sock)})
	if err != nil {
		return s, err
	}
	if err := s.waitReady(ctx); err != nil {
		return s, err
	}
	o.Logf("cristack: containerd with CRI ready in %s (%s)", time.Since(start).Round(time.Millisecond), s.Dir)
	return s, nil
}

func (s *Stack) startRegistry() error {
	helper, err := buildHelper(filepath.Join(s.Dir, "bin"))
	if err != nil {
		return err
	}
	set, err := critestImages(helper)
	if err != nil {
		return err
	}
	if s.reg, err = newRegistry(filepath.Join(s.Dir, "registry")); err != nil {
		return err
	}
	for repo, tags := range set {
		for tag, im := range tags {
			if _, err := s.reg.add(repo, tag, im); err != nil {
				return err
			}
		}
	}
	l, err := listenIn(s.NetNS, RegistryAddr)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	s.reg.serve(l)
	return nil
}

// writeConfigs writes hosts.toml for the mirrored hosts and the
// registry, and the CNI network (named as the network namespace, so that
// its entries in libcni's cache, /var/lib/cni/results, are the stack's).
func (s *Stack) writeConfigs() error {
	for _, h := range append(slices.Clone(mirroredHosts), RegistryAddr) {
		d := filepath.Join(s.Dir, "certs.d", h)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// server replaces the upstream host: nothing is asked of it.
		hosts := fmt.Sprintf("server = \"http://%s\"\n", RegistryAddr)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return err
		}
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": "lvcri0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, s.NetNS, filepath.Join(s.Dir, "cni", "ipam"), PodSubnet)
	return os.WriteFile(filepath.Join(s.Dir, "cni", "net.d", "10-lvcri.conflist"), []byte(conf), 0o644)
}

// containerdConfig is containerd's configuration (version 3); sock is
// layervisor serve's socket.
func (s *Stack) containerdConfig(sock string) string {
	var b strings.Builder
	b.WriteString("version = 3\n")
	if s.o.LayervisorBin != "" {
		fmt.Fprintf(&b, `
[proxy_plugins.layervisor]
  type = "snapshot"
  address = %[1]q
[proxy_plugins.layervisor-diff]
  type = "diff"
  address = %[1]q
[plugins.'io.containerd.service.v1.diff-service']
  default = ["layervisor-diff", "walking"]
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "layervisor"
  differ = "layervisor-diff"
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
  differ = "walking"
`, sock)
	}
	fmt.Fprintf(&b, `
[plugins.'io.containerd.cri.v1.images']
  snapshotter = %[1]q
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[2]q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %[3]q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[4]q]
    conf_dir = %[5]q
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = %[1]q
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        Root = %[6]q
`, s.o.Snapshotter, PauseImage, filepath.Join(s.Dir, "certs.d"), s.o.CNIDir, filepath.Join(s.Dir, "cni", "net.d"), filepath.Join(s.Dir, "runc"))
	if s.o.ShimDir != "" {
		fmt.Fprintf(&b, `    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.layervisor]
      runtime_type = %q
      snapshotter = "layervisor"
      # A privileged pod gets the guest's devices, not the host's: the
      # host's device nodes mean nothing in the VM (as Kata's set-up).
      privileged_without_host_devices = true
`, layervisorRuntime)
	}
	fmt.Fprintf(&b, `
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"

[plugins.'io.containerd.nri.v1.nri']
  socket_path = %q
  plugin_path = %q
  plugin_config_path = %q
`, filepath.Join(s.Dir, "nri", "nri.sock"), filepath.Join(s.Dir, "nri", "plugins"), filepath.Join(s.Dir, "nri", "conf.d"))
	return b.String()
}

// writeWrapper writes the command containerdtest starts: containerd 2.4.2
// entered into the stack's network namespace with nsenter --net only (ip
// netns exec would also give it a mount namespace of its own, hiding the
// snapshotter's later mounts from it), with the shims' environment.
func (s *Stack) writeWrapper() (string, error) {
	c2 := containerdtest.Containerd2Dir()
	path := c2
	if s.o.ShimDir != "" {
		path = s.o.ShimDir + ":" + path
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	fmt.Fprintf(&b, "PATH=%s:\"$PATH\"\nexport PATH\n", shellQuote(path))
	env := slices.Clone(s.o.Env)
	if s.o.Root != "" {
		env = append(env, layervisorRootEnv+"="+s.o.Root, "LAYERVISOR_BOOT_DIR="+s.o.BootDir)
	}
	env = append(env, "TMPDIR="+filepath.Join(s.Dir, "tmp"))
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=") // checked by Start
		fmt.Fprintf(&b, "%s=%s\nexport %s\n", k, shellQuote(v), k)
	}
	fmt.Fprintf(&b, "exec nsenter --net=%s -- %s \"$@\"\n", shellQuote(filepath.Join(netnsDir, s.NetNS)), shellQuote(filepath.Join(c2, "containerd")))
	w := filepath.Join(s.Dir, "bin", "containerd")
	return w, os.WriteFile(w, []byte(b.String()), 0o755)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// startServe starts `layervisor serve` (snapshotter and differ) on sock.
func (s *Stack) startServe(sock, content string) error {
	logf, err := os.Create(filepath.Join(s.Dir, "serve.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.o.LayervisorBin, "--root", s.o.Root, "--log-level", "debug", "serve", "--socket", sock, "--containerd-content", content)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	s.serve, s.serveEnd = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.serveEnd) }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case <-s.serveEnd:
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("layervisor serve exited: %s", tail(string(b), 2000))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("layervisor serve: no socket after 30s")
		}
	}
}

// waitReady waits until CRI reports its runtime and network ready.
func (s *Stack) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := s.Crictl(ctx, "info")
		if err == nil && readyCond(out, "RuntimeReady") && readyCond(out, "NetworkReady") {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("cristack: CRI not ready: %v %s\ncontainerd log: %s", err, tail(out, 2000), s.Containerd.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readyCond tells whether crictl info's JSON has condition typ true.
func readyCond(info, typ string) bool {
	var v struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if json.Unmarshal([]byte(info), &v) != nil {
		return false
	}
	for _, c := range v.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return false
}

// Command is name with args run inside the stack's network namespace
// (nsenter --net), with the stack's TMPDIR.
func (s *Stack) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netnsDir, s.NetNS), "--", name}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(s.Dir, "tmp"))
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Crictl runs crictl against the stack (in its network namespace, where
// CRI streaming listens) and returns its standard output; a failure's
// error carries standard error.
func (s *Stack) Crictl(ctx context.Context, args ...string) (string, error) {
	ep := s.Endpoint()
	cmd := s.Command(ctx, filepath.Join(s.o.ToolsDir, "crictl"),
		append([]string{"--config", "/dev/null", "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "2m"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Critest runs critest v1.37.0's validation suite (not the benchmarks)
// against the stack and returns its result. args are critest's and
// ginkgo's flags, e.g. "-runtime-handler=layervisor",
// "-ginkgo.focus=Streaming", "-ginkgo.skip=…"; the stack adds the
// endpoints, its NRI socket (so the NRI specs run), a JUnit report, no
// colour, and -ginkgo.timeout from ctx's deadline (else 3h). A run whose
// specs fail is a Result, not an error; an error means critest did not
// run or left no report. critest runs in the stack's network namespace
// (CRI streaming, host ports and host-network specs are there).
func (s *Stack) Critest(ctx context.Context, args ...string) (*Result, error) {
	s.runs++
	base := filepath.Join(s.Dir, "critest-"+strconv.Itoa(s.runs))
	ep := s.Endpoint()
	full := []string{"-runtime-endpoint", ep, "-image-endpoint", ep, "-ginkgo.junit-report=" + base + ".xml", "-ginkgo.no-color"}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "nri-socket") }) {
		full = append(full, "-nri-socket="+s.NRISocket())
	}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "ginkgo.timeout") }) {
		timeout := 3 * time.Hour
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl) - 30*time.Second
		}
		if timeout < time.Minute {
			return nil, fmt.Errorf("critest: too little time left (%s)", timeout)
		}
		full = append(full, "-ginkgo.timeout="+timeout.Round(time.Second).String())
	}
	full = append(full, args...)
	logf, err := os.Create(base + ".log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := s.Command(ctx, filepath.Join(s.o.ToolsDir, "critest"), full...)
	cmd.Dir = filepath.Join(s.Dir, "tmp")
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	r, err := parseJUnit(base + ".xml")
	if err != nil {
		b, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("critest %s: %v (exit: %v)\n%s", strings.Join(args, " "), err, runErr, tail(string(b), 3000))
	}
	r.Elapsed, r.Log = elapsed, logf.Name()
	return r, nil
}

// Stop removes the stack: its pods and containers (through CRI, then
// whatever is left by force), containerd, the shims, layervisor serve,
// the mounts under Dir, the network namespace, and Dir when Start made
// it. It keeps going past errors and returns them joined; what it had to
// clean up by force is an error too. A second call does nothing.
func (s *Stack) Stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if s.Containerd != nil {
		if out, err := s.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
			errs = append(errs, fmt.Errorf("remove pods: %w %s", err, out))
		}
		if err := s.Containerd.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop containerd: %w", err))
		}
		// Shims of this containerd still running (their -address is our
		// socket): kill them, then their containers.
		if pids := procsMentioning(s.Containerd.Socket); len(pids) > 0 {
			errs = append(errs, fmt.Errorf("shims left running: %v", pids))
			var socks []string
			for _, p := range pids {
				socks = append(socks, shimSockets(p)...)
			}
			killAll(pids)
			for _, sock := range socks {
				os.Remove(sock)
			}
		}
	}
	if left := s.runcLeftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("containers left in runc: %v", left))
		// Their networks were not torn down: libcni's cached results.
		for _, id := range left {
			os.Remove(filepath.Join(cniCacheDir, "results", "cni-loopback-"+id+"-lo"))
		}
	}
	if s.NetNS != "" {
		cached, _ := filepath.Glob(filepath.Join(cniCacheDir, "results", s.NetNS+"-*"))
		for _, c := range cached {
			os.Remove(c)
		}
	}
	if s.o.LayervisorBin != "" && s.o.Root != "" && s.Containerd != nil {
		if out, err := exec.Command(s.o.LayervisorBin, "--root", s.o.Root, "gc").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("layervisor gc: %v: %s", err, out))
		}
	}
	if s.serve != nil {
		s.serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.serveEnd:
		case <-time.After(30 * time.Second):
			s.serve.Process.Kill()
			<-s.serveEnd
			errs = append(errs, errors.New("layervisor serve did not stop on SIGTERM"))
		}
	}
	if s.reg != nil {
		s.reg.close()
	}
	if s.Dir != "" {
		if err := unmountUnder(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if s.NetNS != "" {
		if err := delNetns(s.NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ownDir && s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cniCacheDir is libcni's cache, which containerd does not move.
const cniCacheDir = "/var/lib/cni"

// runcLeftovers kills and deletes containers left in the stack's runc
// root (each runc shim namespace is a directory there) and returns their
// IDs.
func (s *Stack) runcLeftovers() []string {
	nss, _ := os.ReadDir(filepath.Join(s.Dir, "runc"))
	var left []string
	for _, ns := range nss {
		root := filepath.Join(s.Dir, "runc", ns.Name())
		out, err := exec.Command("runc", "--root", root, "list", "-q").Output()
		if err != nil {
			continue
		}
		for _, id := range strings.Fields(string(out)) {
			left = append(left, id)
			exec.Command("runc", "--root", root, "kill", id, "KILL").Run()
			exec.Command("runc", "--root", root, "delete", "--force", id).Run()
		}
	}
	return left
}

// Leaks lists what of the stack is still there (call it after Stop):
// its network namespace and libcni cache entries, processes naming its
// directory, mounts under it.
func (s *Stack) Leaks() []string {
	var leaks []string
	if s.NetNS != "" {
		if _, err := os.Stat(filepath.Join(netnsDir, s.NetNS)); err == nil {
			leaks = append(leaks, "network namespace "+s.NetNS)
		}
		cached, _ := filepath.Glob(filepath.Join(cniCacheDir, "results", s.NetNS+"-*"))
		for _, c := range cached {
			leaks = append(leaks, "CNI cache entry "+c)
		}
	}
	for _, pid := range procsMentioning(s.Dir) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		leaks = append(leaks, fmt.Sprintf("process %d: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
	}
	if ms, err := mountinfo.Read(); err == nil {
		for _, m := range ms {
			if m.Mountpoint == s.Dir || strings.HasPrefix(m.Mountpoint, s.Dir+"/") {
				leaks = append(leaks, "mount "+m.Mountpoint)
			}
		}
	}
	return leaks
}

// procsMentioning lists the processes (but this one) whose command line
// contains s.
func procsMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// shimSockets are the sockets a containerd 2.x shim listens on (its
// plain and debug ttrpc sockets), from its command line (-namespace, -id,
// -address), as containerd's pkg/shim names them: what a killed shim
// leaves behind.
func shimSockets(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	flag := func(name string) string {
		for i, a := range args {
			if (a == "-"+name || a == "--"+name) && i+1 < len(args) {
				return args[i+1]
			}
		}
		return ""
	}
	ns, id, addr := flag("namespace"), flag("id"), flag("address")
	if ns == "" || id == "" || addr == "" {
		return nil
	}
	var socks []string
	for _, p := range []string{filepath.Join(addr, ns, id), filepath.Join(addr, ns, id, "debug")} {
		socks = append(socks, fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(p))))
	}
	return socks
}

func killAll(pids []int) {
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		alive := false
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unmountUnder unmounts everything mounted under dir, deepest first
// (lazily for what stays busy); it reports what it had to unmount.
func unmountUnder(dir string) error {
	ms, err := mountinfo.Read()
	if err != nil {
		return err
	}
	var under []string
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, dir+"/") {
			under = append(under, m.Mountpoint)
		}
	}
	if len(under) == 0 {
		return nil
	}
	slices.SortFunc(under, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range under {
		if err := syscall.Unmount(p, 0); err != nil {
			if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	return errors.Join(append([]error{fmt.Errorf("mounts left under %s: %v", dir, under)}, errs...)...)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
