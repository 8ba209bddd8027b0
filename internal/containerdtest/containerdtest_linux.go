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
	cmd    *exec.Cmd
	log    *os.File
}

const config = `version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
`

// Start starts containerd with everything under dir.
func Start(ctx context.Context, dir string) (*Daemon, error) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd not installed (apt-get install containerd): %w", err)
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "containerd.sock")}
	for _, sub := range []string{"root", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		return nil, err
	}
	d.log, err = os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", d.Socket)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
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

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Ctr runs ctr against the daemon in namespace "bench".
func (d *Daemon) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", d.Socket, "-n", "bench"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// Import imports an archive and unpacks it with the overlayfs snapshotter.
func (d *Daemon) Import(ctx context.Context, archive string) error {
	_, err := d.Ctr(ctx, "images", "import", "--snapshotter", "overlayfs", archive)
	return err
}

// PrepareMount prepares an active snapshot on parent (a chain ID) and
// mounts it at target, as a runtime does: containerd's rootfs-ready path.
func (d *Daemon) PrepareMount(ctx context.Context, key, parent, target string) error {
	out, err := d.Ctr(ctx, "snapshots", "--snapshotter", "overlayfs", "prepare", "--mounts", key, parent)
	if err != nil {
		return err
	}
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
			case "rbind":
				flags |= unix.MS_BIND | unix.MS_REC
			case "bind":
				flags |= unix.MS_BIND
			default:
				data = append(data, o)
			}
		}
		if err := unix.Mount(m.Source, target, m.Type, flags, strings.Join(data, ",")); err != nil {
			return fmt.Errorf("mount snapshot %s: %w", key, err)
		}
	}
	return nil
}

// Release unmounts target and removes the snapshot.
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
