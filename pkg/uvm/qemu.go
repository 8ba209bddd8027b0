package uvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/qmp"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
	"github.com/layervisor/layervisor/pkg/uvm/share"
	"github.com/layervisor/layervisor/pkg/uvm/vpmem"
)

// accel is forced when it is "kvm" or "tcg" (HostOptions.Accel); otherwise
// it picks KVM when /dev/kvm can be opened and is backed by hardware
// virtualization (kvm_intel or kvm_amd), else TCG. Some nested hosts offer a
// /dev/kvm from a paravirtual backend (kvm_pvm) that only boots kernels built
// for it: an ordinary guest kernel hangs there without printing a line, so
// such a /dev/kvm does not count.
func accel(forced string) string {
	if forced == "kvm" || forced == "tcg" {
		return forced
	}
	return pickAccel(func(p string) bool { _, err := os.Stat(p); return err == nil }, func() bool {
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			return false
		}
		f.Close()
		return true
	})
}

// accelOption is QEMU's -accel value. TCG runs single-threaded: every vCPU
// in one host thread, round robin. With one thread per vCPU (MTTCG, QEMU's
// default), a CI run saw a 2-vCPU guest whose idle vCPU 0 was never woken
// again by its timer or by IPIs from vCPU 1 (RCU stalls from 1.7 s on, no
// agent after 60 s); in one thread no cross-thread wake-up can be lost. It
// costs about 5% of boot time, and on small hosts the spare core serves the
// host side of the I/O.
func accelOption(acc string) string {
	if acc == "tcg" {
		// A bounded translation cache: QEMU's default sizes it from host
		// memory, ~26 MB more resident per idle UVM. It costs a cold boot
		// about 1 s here (7.0–7.6 s → 8.1–8.6 s); restored UVMs barely
		// translate, and they are the common case.
		return "tcg,thread=single,tb-size=32"
	}
	return acc
}

func pickAccel(exists func(string) bool, kvmOpens func() bool) string {
	hardware := exists("/sys/module/kvm_intel") || exists("/sys/module/kvm_amd")
	if hardware && kvmOpens() {
		return "kvm"
	}
	return "tcg"
}

// qemuSandbox is QEMU's seccomp filter: no obsolete system calls, no
// set*uid/set*gid (QEMU never changes its user here: no -runas), no
// fork/execve (templates migrate over unix sockets: migrate.go), no
// scheduler or affinity changes.
const qemuSandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// qemuArgs is the QEMU command line. Guest RAM is a shared memfd, or with
// ramFile a shared file (templates: see template.go); shared either way,
// as vhost-user-fs (virtiofs) needs. A UVM restored from a template gets
// no kernel or initramfs: its guest is already running, and QEMU would
// hold both in its own memory for the VM's life (fw_cfg keeps them for a
// reboot), ~21 MiB per UVM here. Without them a reboot would find nothing
// to boot, so every UVM runs with -no-reboot: a guest that reboots (a
// panic, panic=-1) ends QEMU, which its owner sees as the VM's end.
func (u *UVM) qemuArgs(acc, ramFile string, restoring bool) []string {
	c := u.cfg
	mem := strconv.Itoa(c.MemoryMB) + "M"
	backend := "memory-backend-memfd,id=ram,size=" + mem + ",share=on"
	if ramFile != "" {
		backend = "memory-backend-file,id=ram,size=" + mem + ",share=on,mem-path=" + strings.ReplaceAll(ramFile, ",", ",,")
	}
	args := []string{
		"-name", "layervisor-" + c.ID,
		"-M", "q35,memory-backend=ram", "-accel", accelOption(acc), "-smp", strconv.Itoa(c.CPUs),
		"-m", fmt.Sprintf("%s,slots=%d,maxmem=%dM", mem, c.VPMemSlots, c.MemoryMB+c.PmemBudgetMB),
		"-object", backend,
		"-display", "none", "-nodefaults", "-no-user-config", "-nic", "none", "-no-reboot",
		// The console goes to a bounded ring in QEMU's memory, drained into
		// debug/console.log by the host (see consolelog.go).
		"-chardev", fmt.Sprintf("ringbuf,id=%s,size=%d", consoleChardev, consoleRingSize),
		"-serial", "chardev:" + consoleChardev,
		"-sandbox", qemuSandbox,
		"-D", u.path("debug/qemu.log"),
		"-qmp", "unix:" + u.path("qmp.sock") + ",server=on,wait=off",
		// A second monitor for readers (uvm ls): the owner holds the first.
		"-qmp", "unix:" + u.path("stats.sock") + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path=" + u.path("agent.sock") + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name=" + agent.PortName,
		// Free-page reporting hands pages the guest frees back to the host
		// (QEMU punches them out of the RAM file or memfd); the statistics
		// queue feeds uvm ls.
		"-device", "virtio-balloon-pci,id=balloon,free-page-reporting=on",
	}
	if !restoring {
		args = append(args, "-kernel", filepath.Join(c.BootDir, "vmlinuz"), "-initrd", c.Initrd,
			"-append", "console=ttyS0 quiet panic=-1")
	}
	for i := 0; i < c.SCSIControllers; i++ {
		args = append(args, "-device", fmt.Sprintf("virtio-scsi-pci,id=scsi%d", i))
	}
	// Root ports eight to a slot (multifunction), from slot 0x10 on.
	for i := 0; i < c.RootPorts; i++ {
		dev := fmt.Sprintf("pcie-root-port,id=%s,chassis=%d,bus=pcie.0,addr=%#x.%d", pciports.Name(i), i+1, 0x10+i/8, i%8)
		if i%8 == 0 {
			dev += ",multifunction=on"
		}
		args = append(args, "-device", dev)
	}
	return args
}

// Start boots the UVM and waits for its agent.
func (u *UVM) Start(ctx context.Context) (err error) {
	if st := u.State().Status; st == "running" {
		return fmt.Errorf("uvm %s is already running", u.cfg.ID)
	}
	if u.cfg.WindowsTemplate != "" {
		return fmt.Errorf("uvm %s: %w", u.cfg.ID, ErrWindowsBoot)
	}
	c := u.cfg
	qemu, err := exec.LookPath(c.QEMU)
	if err != nil {
		return fmt.Errorf("uvm %s: QEMU (%s) not found: install qemu-system-x86 (bash scripts/deps.sh): %w", c.ID, c.QEMU, err)
	}
	if _, err := os.Stat(filepath.Join(c.BootDir, "vmlinuz")); err != nil {
		return fmt.Errorf("uvm %s: kernel missing in %s: run bash scripts/deps.sh (or set LAYERVISOR_BOOT_DIR): %w", c.ID, c.BootDir, err)
	}
	if _, err := os.Stat(c.Initrd); err != nil {
		slog.Info("building the UVM initramfs", "path", c.Initrd)
		if err := BuildInitramfs(ctx, InitramfsOptions{BootDir: c.BootDir, Agent: c.Host.Agent, Runtime: c.Host.GuestRuntime, Out: c.Initrd}); err != nil {
			return fmt.Errorf("uvm %s: initramfs %s missing and could not be built (layervisor uvm image build): %w", c.ID, c.Initrd, err)
		}
	}
	defer func() {
		if err != nil {
			u.fail(err)
		}
	}()
	acc := accel(c.Host.Accel)
	if c.Cold {
		return u.launch(ctx, qemu, acc, launchOpts{})
	}
	want, err := u.expectedManifest(qemu, acc)
	if err != nil {
		slog.Warn("uvm template key unknown: booting cold", "uvm", c.ID, "err", err)
		return u.launch(ctx, qemu, acc, launchOpts{})
	}
	dir, terr := u.findTemplate(want)
	if terr == nil {
		rerr := u.launch(ctx, qemu, acc, launchOpts{restoreFrom: dir})
		if rerr == nil {
			return nil
		}
		if ctx.Err() != nil {
			return rerr
		}
		slog.Warn("uvm template restore failed: booting cold and saving the template again", "uvm", c.ID, "template", dir, "err", rerr)
	} else if !errors.Is(terr, os.ErrNotExist) {
		slog.Warn("uvm template unusable: booting cold and saving it again", "uvm", c.ID, "err", terr)
	}
	return u.launch(ctx, qemu, acc, launchOpts{saveAs: &want})
}

// startClone creates dst with src's size and clones src into it in the
// background; wait returns the clone's result (and may be called again).
func startClone(ctx context.Context, src, dst string) (wait func() error, err error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(st.Size()); err != nil {
		f.Close()
		return nil, err
	}
	done := make(chan struct{})
	var cerr error
	go func() {
		defer close(done)
		_, cerr = scratch.CloneInto(ctx, src, f)
		if err := f.Close(); cerr == nil {
			cerr = err
		}
	}()
	return func() error { <-done; return cerr }, nil
}

// launchOpts say how launch starts QEMU: a plain cold boot on memfd RAM;
// a cold boot on a RAM file saved as a template once the agent answers
// (saveAs); or a restore of the template in restoreFrom.
type launchOpts struct {
	saveAs      *Manifest
	restoreFrom string
}

// restoreTimeout bounds a restore: a damaged template should fall back to
// a cold boot quickly, and a good one answers in about a second.
const restoreTimeout = 20 * time.Second

// launch starts QEMU and waits for the agent; on failure it leaves no
// QEMU, socket or RAM file behind (the caller marks the UVM failed).
func (u *UVM) launch(ctx context.Context, qemu, acc string, o launchOpts) (err error) {
	c := u.cfg
	var un undo.Stack
	defer func() {
		if err != nil {
			un.Run(ctx)
		}
	}()
	for _, s := range []string{"qmp.sock", "stats.sock", "agent.sock", "ram"} {
		os.Remove(u.path(s))
	}
	os.Remove(u.path(consoleLog))
	os.Remove(u.path(consoleLog + ".1"))
	ramFile := ""
	if o.saveAs != nil || o.restoreFrom != "" {
		ramFile = u.path("ram")
		un.Push("remove RAM file", func(context.Context) error { return os.Remove(ramFile) })
	}
	// The RAM clone is made while QEMU starts (it maps the file but reads
	// nothing before the incoming migration), and waited for before that.
	waitClone := func() error { return nil }
	if o.restoreFrom != "" {
		if waitClone, err = startClone(ctx, filepath.Join(o.restoreFrom, tplRAM), ramFile); err != nil {
			return fmt.Errorf("uvm %s: %w", c.ID, err)
		}
		un.Push("finish the RAM clone", func(context.Context) error { waitClone(); return nil })
	}
	args := u.qemuArgs(acc, ramFile, o.restoreFrom != "")
	if o.restoreFrom != "" {
		args = append(args, "-incoming", "defer")
	}
	cmd := exec.Command(qemu, args...)
	// Kept in memory, bounded: a guest may make QEMU complain without end.
	stderr := newHeadTail(stderrKeep)
	cmd.Stderr = stderr
	// A UVM with an owner dies with it: the kernel kills QEMU when the
	// owner process dies, whatever it was doing (gc removes the rest).
	tied := u.State().Owner != nil
	detach(cmd, tied)
	start := cmd.Start
	if tied {
		start = func() error { return startTied(cmd) }
	}
	if err := start(); err != nil {
		return fmt.Errorf("uvm %s: start QEMU: %w", c.ID, err)
	}
	crashpoint.Hit("uvm.qemu-started") // before its PID is recorded
	u.proc = cmd.Process
	u.exited = make(chan struct{})
	go func() {
		werr := cmd.Wait()
		u.mu.Lock()
		u.exitErr = werr
		u.mu.Unlock()
		close(u.exited)
	}()
	un.Push("kill QEMU", func(context.Context) error { u.proc.Kill(); <-u.exited; return nil })
	u.mu.Lock()
	u.state.PID, u.state.Status, u.state.Accel, u.state.Started, u.state.Error = cmd.Process.Pid, "starting", acc, time.Now().UTC(), ""
	u.mu.Unlock()
	u.save()

	timeout := c.BootTimeout
	if o.restoreFrom != "" {
		timeout = min(timeout, restoreTimeout)
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-u.exited:
			cancel()
		case <-bctx.Done():
		}
	}()
	if u.qmp, err = dialRetry(bctx, u.path("qmp.sock")); err != nil {
		return u.bootError("QMP", err, stderr.String())
	}
	un.Push("close QMP", func(context.Context) error { return u.qmp.Close() })
	if u.console, err = startConsoleDrain(u.qmp, u.path(consoleLog)); err != nil {
		return fmt.Errorf("uvm %s: %w", c.ID, err)
	}
	un.Push("stop draining the console", func(context.Context) error { u.console.close(); return nil })
	t0 := time.Now()
	if o.restoreFrom != "" {
		if err := waitClone(); err != nil {
			return fmt.Errorf("uvm %s: %w", c.ID, err)
		}
		// Connected before the guest resumes: the agent, which was
		// reading its port when the template was saved, then finds a host
		// there instead of reading EOF and backing off.
		var d net.Dialer
		conn, err := d.DialContext(bctx, "unix", u.path("agent.sock"))
		if err != nil {
			return u.bootError("guest agent socket", err, stderr.String())
		}
		if err := restore(bctx, u.qmp, o.restoreFrom); err != nil {
			conn.Close()
			return u.bootError("template restore", err, stderr.String())
		}
		if u.agent, err = agent.Connect(bctx, conn); err != nil {
			return u.bootError("guest agent", err, stderr.String())
		}
	} else if u.agent, err = agent.Dial(bctx, u.path("agent.sock")); err != nil {
		return u.bootError("guest agent", err, stderr.String())
	}
	un.Push("close agent", func(context.Context) error { return u.agent.Close() })
	slog.Debug("uvm agent ready", "uvm", c.ID, "after", time.Since(t0), "accel", acc, "template", o.restoreFrom)
	if o.saveAs != nil {
		t1 := time.Now()
		stopped, err := u.saveTemplate(bctx, *o.saveAs)
		if err != nil {
			slog.Warn("uvm template not saved: later UVMs of this shape boot cold too", "uvm", c.ID, "err", err)
		} else if stopped {
			slog.Info("saved UVM template", "uvm", c.ID, "key", o.saveAs.Key, "took", time.Since(t1))
		}
		if stopped {
			if err := u.qmp.Execute(bctx, "cont", nil, nil); err != nil {
				return fmt.Errorf("uvm %s: resume after saving the template: %w", c.ID, err)
			}
		}
	}
	if err := u.setIdentity(bctx); err != nil {
		return err
	}
	u.pollBalloonStats(bctx)
	u.wire()
	u.mu.Lock()
	u.state.Status = "running"
	u.state.Template = ""
	if o.restoreFrom != "" {
		u.state.Template = filepath.Base(o.restoreFrom)
	}
	u.mu.Unlock()
	if err := u.save(); err != nil {
		return err
	}
	go u.watch()
	return nil
}

func dialRetry(ctx context.Context, sock string) (*qmp.Client, error) {
	for {
		c, err := qmp.Dial(ctx, sock)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(5 * time.Millisecond): // QEMU makes the socket within ~0.1 s
		}
	}
}

// bootError explains a failed boot with the console's last lines.
func (u *UVM) bootError(what string, err error, qemuStderr string) error {
	if u.console != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		u.console.drain(dctx)
		cancel()
	}
	select {
	case <-u.exited:
		u.mu.Lock()
		werr := u.exitErr
		u.mu.Unlock()
		err = fmt.Errorf("QEMU exited (%v): %s %s", werr, strings.TrimSpace(qemuStderr), tail(u.path("debug/qemu.log"), 10))
	default:
	}
	return fmt.Errorf("uvm %s (-accel %s, %d vCPUs): %s did not come up: %w\n--- console tail (%s) ---\n%s",
		u.cfg.ID, accelOption(u.State().Accel), u.cfg.CPUs, what, err,
		u.path(consoleLog), tail(u.path(consoleLog), 30))
}

func tail(p string, lines int) string {
	b, _ := os.ReadFile(p)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// watch marks the UVM failed when QEMU exits or the agent channel drops
// while it is meant to be running.
func (u *UVM) watch() {
	var why error
	select {
	case <-u.exited:
		why = errors.New("QEMU exited")
	case <-u.agent.Done():
		why = fmt.Errorf("agent connection lost: %v", u.agent.Err())
	case <-u.qmp.Done():
		why = fmt.Errorf("QMP connection lost: %v", u.qmp.Err())
	}
	if u.State().Status == "running" {
		slog.Warn("uvm failed", "uvm", u.cfg.ID, "why", why)
		u.fail(why)
	}
}

// wire builds the attachment controllers over QMP and the agent.
func (u *UVM) wire() {
	c := u.cfg
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ports = pciports.New(c.RootPorts)
	u.scsi, _ = scsi.New(scsi.NewQEMUHost(u.qmp), scsiGuest{u.agent}, c.SCSIControllers)
	u.vpmem = vpmem.New(vpmem.NewQEMUHost(u.qmp, u.ports), pmemGuest{u.agent},
		vpmem.Config{Slots: c.VPMemSlots, MaxSize: c.VPMemMaxSize, Budget: uint64(c.PmemBudgetMB) << 20})
	u.shareHst = share.NewQEMUHost(u.qmp, u.ports, u.path("shares"), "")
	u.shares = share.New(u.shareHst, u.agent, u.path("shares"))
}

type scsiGuest struct{ a *agent.Client }

func (g scsiGuest) MountSCSI(ctx context.Context, s scsi.Slot, partition int, readOnly bool, fsType, guestPath string) error {
	return g.a.MountSCSI(ctx, agent.MountSCSIArgs{Controller: s.Controller, LUN: s.LUN, Partition: partition, ReadOnly: readOnly, FSType: fsType, Target: guestPath})
}
func (g scsiGuest) Unmount(ctx context.Context, p string) error { return g.a.Unmount(ctx, p) }

type pmemGuest struct{ a *agent.Client }

func (g pmemGuest) MountPmem(ctx context.Context, d vpmem.Device, guestPath string) error {
	return g.a.MountPmem(ctx, agent.MountPmemArgs{Addr: d.Addr, Size: d.Size, FSType: "ext4", Target: guestPath})
}
func (g pmemGuest) Unmount(ctx context.Context, p string) error { return g.a.Unmount(ctx, p) }

// Stop shuts the guest down (agent, then QMP quit, then SIGKILL after a
// deadline) and releases host-side helpers. Idempotent.
func (u *UVM) Stop(ctx context.Context) error { return u.stop(ctx, true) }

// Kill ends QEMU at once (QMP quit, then SIGKILL) without asking the guest
// to shut down, and releases host-side helpers as Stop does. It is for a
// UVM whose guest state no longer matters: nothing the guest has not
// written through is flushed, so a read-write disk may be left unclean.
// `run` uses it for the UVM it made, whose scratch it throws away.
func (u *UVM) Kill(ctx context.Context) error { return u.stop(ctx, false) }

func (u *UVM) stop(ctx context.Context, graceful bool) error {
	if o := u.State().Owner; u.opened && o != nil && o.Alive() {
		return fmt.Errorf("uvm %s: %w: it belongs to %s and stops when that process ends", u.cfg.ID, ErrNotOwner, o)
	}
	var errs []error
	// The console's latest output, before the ring goes with QEMU.
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if u.console != nil {
		u.console.drain(dctx)
	} else if u.qmp != nil {
		if err := drainConsoleOnce(dctx, u.qmp, u.path(consoleLog)); err != nil {
			slog.Debug("console not drained", "uvm", u.cfg.ID, "err", err)
		}
	}
	cancel()
	if graceful && u.agent != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := u.agent.Shutdown(sctx); err != nil && !errors.Is(err, agent.ErrDisconnected) {
			slog.Debug("agent shutdown", "err", err)
		}
		cancel()
	}
	u.mu.Lock()
	u.state.Status = "stopped"
	u.mu.Unlock()
	if !graceful || !u.waitExit(5*time.Second) {
		if u.qmp != nil {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			u.qmp.Execute(qctx, "quit", nil, nil)
			cancel()
		}
		if !u.waitExit(5 * time.Second) {
			if p := u.pid(); p > 0 {
				killPID(p)
			}
			u.waitExit(5 * time.Second)
		}
	}
	if u.console != nil {
		u.console.close()
	}
	if u.shareHst != nil {
		if err := u.shareHst.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if u.agent != nil {
		u.agent.Close()
	}
	if u.qmp != nil {
		u.qmp.Close()
	}
	for _, s := range []string{"qmp.sock", "stats.sock", "agent.sock", "ram"} {
		os.Remove(u.path(s))
	}
	if err := u.save(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (u *UVM) pid() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state.PID
}

// waitExit waits for QEMU to exit, in this process or (for a UVM started by
// another process) by polling its pid.
func (u *UVM) waitExit(d time.Duration) bool {
	if u.exited != nil {
		select {
		case <-u.exited:
			return true
		case <-time.After(d):
			return false
		}
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !alive(u.pid(), u.dir) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !alive(u.pid(), u.dir)
}

// alive reports whether pid is a QEMU of the UVM in dir (the pid could
// have been reused by another process).
func alive(pid int, dir string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return false
		}
	}
	return bytes.Contains(b, []byte(filepath.Join(dir, "qmp.sock")))
}
