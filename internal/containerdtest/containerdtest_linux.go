// Package containerdtest runs a private containerd daemon (Debian's
// containerd 1.6) for benchmarks and cross-checks: its own root, state and
// socket under a directory, the CRI plugin off, stopped and cleaned up by Stop.
package containerdtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Daemon is a running containerd.
type Daemon struct {
	Dir    string
	Socket string
	ctr    string
	cmd    *exec.Cmd
	log    *os.File
}

const config = `version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
`

// Options tune StartWith.
type Options struct {
	// Bin and Ctr are the containerd and ctr binaries (default: the ones in
	// PATH, Debian's 1.6).
	Bin, Ctr string
	// Config replaces the default configuration (version 2, CRI off).
	Config string
}

// Start starts Debian's containerd with everything under dir.
func Start(ctx context.Context, dir string) (*Daemon, error) {
	return StartWith(ctx, dir, Options{})
}

// StartWith starts containerd with everything under dir: root, state,
// socket, configuration and log (containerd.log).
func StartWith(ctx context.Context, dir string, o Options) (*Daemon, error) {
	ownShims := o.Bin != ""
	if o.Bin == "" {
		o.Bin = "containerd"
	}
	if o.Ctr == "" {
		o.Ctr = "ctr"
	}
	if o.Config == "" {
		o.Config = config
	}
	bin, err := exec.LookPath(o.Bin)
	if err != nil {
		return nil, fmt.Errorf("containerd not installed (apt-get install containerd): %w", err)
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "containerd.sock"), ctr: o.Ctr}
	for _, sub := range []string{"root", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(o.Config), 0o600); err != nil {
		return nil, err
	}
	d.log, err = os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", d.Socket)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	// Shims are looked up in PATH: a containerd given by path brings its
	// own (Debian's 1.6 runc shim does not work with containerd 2.x).
	if ownShims {
		d.cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	if err := d.cmd.Start(); err != nil {
		d.log.Close()
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := d.Ctr(ctx, "version"); err == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.Stop()
			b, _ := os.ReadFile(d.log.Name())
			return nil, fmt.Errorf("containerd did not come up: %s", tail(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ContentDir is the daemon's content store directory (where blobs are).
func (d *Daemon) ContentDir() string {
	return filepath.Join(d.Dir, "root", "io.containerd.content.v1.content")
}

// Log returns the end of the daemon's log, for failure messages.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "containerd.log"))
	return tail(b)
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// namespace is where Ctr and Client work.
const namespace = "bench"

// Ctr runs ctr against the daemon in namespace "bench" and returns its
// standard output; standard error (ctr 2.x warns there) goes into errors.
func (d *Daemon) Ctr(ctx context.Context, args ...string) (string, error) {
	return d.CtrIn(ctx, namespace, args...)
}

// CtrIn is Ctr in namespace ns: a client of its own, as far as
// containerd's namespaces separate clients.
func (d *Daemon) CtrIn(ctx context.Context, ns string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.ctr, append([]string{"-a", d.Socket, "-n", ns}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w: %s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// Import imports an archive and unpacks it with the overlayfs snapshotter.
func (d *Daemon) Import(ctx context.Context, archive string) error {
	return d.ImportWith(ctx, archive, "overlayfs")
}

// ImportWith imports an archive and unpacks it with the named snapshotter.
func (d *Daemon) ImportWith(ctx context.Context, archive, snapshotter string) error {
	_, err := d.Ctr(ctx, "images", "import", "--snapshotter", snapshotter, archive)
	return err
}

// PrepareMount prepares an active overlayfs snapshot on parent (a chain ID)
// with ctr and mounts it at target: containerd's rootfs-ready path as a
// command line sees it (Client.PrepareMount is the runtime's).
func (d *Daemon) PrepareMount(ctx context.Context, key, parent, target string) error {
	out, err := d.Ctr(ctx, "snapshots", "--snapshotter", "overlayfs", "prepare", "--mounts", key, parent)
	if err != nil {
		return err
	}
	if err := MountCtrJSON(out, target); err != nil {
		return fmt.Errorf("mount snapshot %s: %w", key, err)
	}
	return nil
}

// MountCtrJSON mounts at target the mounts `ctr snapshots prepare|view
// --mounts` printed (JSON), as a runtime would.
func MountCtrJSON(out, target string) error {
	var mounts []struct {
		Type    string   `json:"type"`
		Source  string   `json:"source"`
		Options []string `json:"options"`
	}
	if err := json.Unmarshal([]byte(out), &mounts); err != nil {
		return fmt.Errorf("ctr snapshot mounts %q: %w", out, err)
	}
	for _, m := range mounts {
		var flags uintptr
		var data []string
		for _, o := range m.Options {
			switch o {
			case "ro":
				flags |= unix.MS_RDONLY
			case "rw":
			case "rbind":
				flags |= unix.MS_BIND | unix.MS_REC
			case "bind":
				flags |= unix.MS_BIND
			default:
				data = append(data, o)
			}
		}
		if err := unix.Mount(m.Source, target, m.Type, flags, strings.Join(data, ",")); err != nil {
			return fmt.Errorf("mount %s (%s) at %s: %w", m.Source, m.Type, target, err)
		}
	}
	return nil
}

// Release unmounts target and removes the overlayfs snapshot with ctr.
func (d *Daemon) Release(ctx context.Context, key, target string) error {
	if out, err := exec.Command("umount", target).CombinedOutput(); err != nil {
		return fmt.Errorf("umount %s: %v %s", target, err, out)
	}
	_, err := d.Ctr(ctx, "snapshots", "--snapshotter", "overlayfs", "rm", key)
	return err
}

// Stop stops the daemon and unmounts anything left under its root.
func (d *Daemon) Stop() error {
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
	}
	if d.log != nil {
		d.log.Close()
	}
	return nil
}

// ProxyConfig16 configures containerd 1.6 with layervisor as a proxy
// snapshotter (1.6 has no proxy differ); %[1]s is layervisor's socket.
const ProxyConfig16 = `version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[proxy_plugins.layervisor]
  type = "snapshot"
  address = "%[1]s"
`

// ProxyConfig2 configures containerd 2.x with layervisor as a proxy
// snapshotter and differ; the transfer service unpacks only what
// unpack_config lists (overlayfs kept for comparisons). %[1]s is
// layervisor's socket.
const ProxyConfig2 = `version = 3
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[proxy_plugins.layervisor]
  type = "snapshot"
  address = "%[1]s"
[proxy_plugins.layervisor-diff]
  type = "diff"
  address = "%[1]s"
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
`

// Containerd2Dir is where scripts/deps.sh builds containerd 2.x (with ctr
// and the runc shim); LAYERVISOR_CONTAINERD2_DIR overrides it.
func Containerd2Dir() string {
	if d := os.Getenv("LAYERVISOR_CONTAINERD2_DIR"); d != "" {
		return d
	}
	return "/var/cache/layervisor/containerd-v2.4.2"
}
