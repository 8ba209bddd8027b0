package uvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const trivialInit = `package main

import "syscall"

func main() { syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF) }
`

// BenchmarkBoot compares boot-to-agent-ready with the same kernel and QEMU
// command line booting a trivial init that powers off at once: the
// difference is what the agent (module loading, channel set-up) costs.
//
//	go test -run '^$' -bench Boot -benchtime 3x ./pkg/uvm/
func BenchmarkBoot(b *testing.B) {
	cfg := testConfig(b, "bench")
	cfg.Root = b.TempDir()
	ctx := context.Background()
	b.Run("agent-ready", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			u, err := Create(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			err = u.Start(ctx)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			u.Stop(ctx)
		}
	})
	// The trivial init: same kernel, same machine, an initramfs whose
	// /init powers off.
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(trivialInit), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module trivial\n"), 0o644)
	build := exec.Command("go", "build", "-o", "init", ".")
	build.Dir, build.Env = dir, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build trivial init: %v %s", err, out)
	}
	triv := cfg
	triv.Initrd = filepath.Join(dir, "trivial.img")
	if err := BuildInitramfs(ctx, InitramfsOptions{BootDir: cfg.BootDir, Agent: filepath.Join(dir, "init"), Out: triv.Initrd}); err != nil {
		b.Fatal(err)
	}
	b.Run("trivial-init-poweroff", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			u, err := Create(ctx, triv)
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command("qemu-system-x86_64", u.qemuArgs(accel())...)
			b.StartTimer()
			err = cmd.Run()
			b.StopTimer()
			if err != nil {
				b.Fatalf("qemu: %v", err)
			}
		}
	})
}

// BenchmarkIdleMemory reports the host RSS of an idle UVM's QEMU next to
// the configured guest RAM.
func BenchmarkIdleMemory(b *testing.B) {
	cfg := testConfig(b, "mem")
	cfg.Root = b.TempDir()
	ctx := context.Background()
	u, err := Create(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := u.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer u.Stop(ctx)
	time.Sleep(2 * time.Second)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		status, _ := os.ReadFile("/proc/" + strconv.Itoa(u.State().PID) + "/status")
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kb, _ := strconv.Atoi(strings.Fields(line)[1])
				b.ReportMetric(float64(kb)/1024, "host-RSS-MiB")
				b.ReportMetric(float64(u.Config().MemoryMB), "guest-RAM-MiB")
				b.ReportMetric(float64(kb)/1024/float64(u.Config().MemoryMB), "RSS/RAM")
			}
		}
	}
}
