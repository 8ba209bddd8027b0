package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// UVMBootDir is the utility VM's kernel directory the tests boot:
// $LAYERVISOR_BOOT_DIR, else where scripts/deps.sh puts it.
func UVMBootDir() string {
	if d := os.Getenv("LAYERVISOR_BOOT_DIR"); d != "" {
		return d
	}
	return "/var/cache/layervisor/boot"
}

// NeedUVMKernel returns UVMBootDir, stopping the test when it holds no
// kernel.
func NeedUVMKernel(t testing.TB) string {
	t.Helper()
	boot := UVMBootDir()
	if _, err := os.Stat(filepath.Join(boot, "vmlinuz")); err != nil {
		Unavailable(t, "no UVM kernel in "+boot+": scripts/deps.sh fetches it")
	}
	return boot
}

// BuildGuestAgent builds the guest agent (cmd/layervisor-agent; static, as
// the initramfs's /init must be) to out. The programs find the agent beside
// themselves or on PATH and never build it: tests build it here.
func BuildGuestAgent(out string) error {
	cmd := exec.Command("go", "build", "-o", out, "github.com/layervisor/layervisor/cmd/layervisor-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the guest agent: %v\n%s", err, b)
	}
	return nil
}

var agent struct {
	once sync.Once
	path string
	err  error
}

// GuestAgent returns a guest agent built once per test binary (into a
// SharedDir), failing the test when the build fails.
func GuestAgent(t testing.TB) string {
	t.Helper()
	agent.once.Do(func() {
		dir, err := SharedDir("lv-agent-")
		if err != nil {
			agent.err = err
			return
		}
		agent.path = filepath.Join(dir, "layervisor-agent")
		agent.err = BuildGuestAgent(agent.path)
	})
	if agent.err != nil {
		t.Fatal(agent.err)
	}
	return agent.path
}

var (
	programsOnce sync.Once
	programsDir  string
	programsErr  error
)

// Programs builds layervisor, the containerd shim and the guest agent into
// one directory, once per test binary: the shim finds the agent beside
// it, and containerd finds the shim when the directory is on its PATH.
func Programs(t testing.TB) string {
	t.Helper()
	programsOnce.Do(func() {
		if programsDir, programsErr = SharedDir("lv-programs-"); programsErr != nil {
			return
		}
		for name, pkg := range map[string]string{
			"layervisor":                    "github.com/layervisor/layervisor/cmd/layervisor",
			"containerd-shim-layervisor-v1": "github.com/layervisor/layervisor/cmd/containerd-shim-layervisor-v1",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(programsDir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				programsErr = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
		programsErr = BuildGuestAgent(filepath.Join(programsDir, "layervisor-agent"))
	})
	if programsErr != nil {
		t.Fatal(programsErr)
	}
	return programsDir
}
