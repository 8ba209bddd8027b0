package uvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
			cmd := exec.Command("qemu-system-x86_64", u.qemuArgs(accel(cfg.Host.Accel), "", false)...)
			b.StartTimer()
			err = cmd.Run()
			b.StopTimer()
			if err != nil {
				b.Fatalf("qemu: %v", err)
			}
		}
	})
}

// BenchmarkTemplateStart compares Start (to a ready, reseeded agent)
// booting the kernel with Start restoring a template, in the same run:
//
//	go test -run '^$' -bench TemplateStart -benchtime 3x ./pkg/uvm/
func BenchmarkTemplateStart(b *testing.B) {
	cfg := testConfig(b, "seed")
	cfg.Root = b.TempDir()
	ctx := context.Background()
	startStop := func(c Config, restored bool) time.Duration {
		u, err := Create(ctx, c)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		err = u.Start(ctx)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		if (u.State().Template != "") != restored {
			b.Fatalf("%s: template %q, want restored=%v", c.ID, u.State().Template, restored)
		}
		u.Stop(ctx)
		u.Remove(ctx)
		return d
	}
	startStop(cfg, false) // saves the template
	var cold, warm time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := cfg
		c.ID, c.Cold = "cold", true
		cold += startStop(c, false)
		c.ID, c.Cold = "warm", false
		warm += startStop(c, true)
	}
	b.ReportMetric(cold.Seconds()/float64(b.N), "cold-s")
	b.ReportMetric(warm.Seconds()/float64(b.N), "template-s")
	b.ReportMetric(float64(warm)/float64(cold), "template/cold")
}

// BenchmarkIdleMemory starts one UVM, then ten at once, from a template
// and reports, once they are idle, host RSS (QEMU and virtiofsd) against
// the guest memory in use (balloon statistics): the overhead is what a
// UVM costs the host beyond its guest's own pages.
//
//	go test -run '^$' -bench IdleMemory -benchtime 1x ./pkg/uvm/
func BenchmarkIdleMemory(b *testing.B) {
	cfg := testConfig(b, "seed")
	cfg.Root = b.TempDir()
	ctx := context.Background()
	seed, err := Create(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := seed.Start(ctx); err != nil {
		b.Fatal(err)
	}
	seed.Stop(ctx)
	seed.Remove(ctx)
	for _, n := range []int{1, 10} {
		b.Run(strconv.Itoa(n)+"-uvms", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				us := make([]*UVM, n)
				errs := make(chan error, n)
				for j := range us {
					c := cfg
					c.ID = fmt.Sprintf("idle%d", j)
					if us[j], err = Create(ctx, c); err != nil {
						b.Fatal(err)
					}
					go func() { errs <- us[j].Start(ctx) }()
				}
				for range us {
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
				}
				// Idle: let free-page reporting and the stats poll run.
				time.Sleep(10 * time.Second)
				var rss, used int64
				for _, u := range us {
					m := MemoryUse(ctx, cfg.Root, u.ID())
					for m.GuestUsed < 0 {
						time.Sleep(time.Second)
						m = MemoryUse(ctx, cfg.Root, u.ID())
					}
					rss, used = rss+m.HostRSS, used+m.GuestUsed
				}
				const mib = 1 << 20
				b.ReportMetric(float64(rss)/mib, "total-RSS-MiB")
				b.ReportMetric(float64(rss)/mib/float64(n), "RSS-MiB/uvm")
				b.ReportMetric(float64(used)/mib/float64(n), "guest-used-MiB/uvm")
				b.ReportMetric(float64(rss-used)/mib/float64(n), "overhead-MiB/uvm")
				for _, u := range us {
					u.Stop(ctx)
					u.Remove(ctx)
				}
			}
		})
	}
}
