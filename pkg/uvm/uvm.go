// Package uvm runs a utility VM: QEMU (KVM when /dev/kvm is usable, TCG
// otherwise) booting Debian's cloud kernel with layervisor's guest agent as
// init, a QMP control socket, a virtio-serial agent channel, hot-plug slots
// (virtio-scsi controllers, PCIe root ports, memory slots for pmem) and the
// three attachment controllers built on them.
package uvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/qmp"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
	"github.com/layervisor/layervisor/pkg/uvm/share"
	"github.com/layervisor/layervisor/pkg/uvm/vpmem"
)

// Errors callers may test with errors.Is.
var (
	ErrInvalidID = errors.New("invalid UVM id")
	ErrExists    = errors.New("UVM already exists")
	ErrNotFound  = errors.New("UVM not found")
	ErrNotReady  = errors.New("UVM is not running")
)

// The size of a UVM whose Config leaves it unset.
const (
	DefaultMemoryMB = 512
	DefaultCPUs     = 2
)

// DefaultBootDir is the boot directory of a Config that names none: where
// scripts/deps.sh puts the kernel and its modules.
const DefaultBootDir = "/var/cache/layervisor/boot"

// HostOptions are how this process runs utility VMs: settings a program
// takes from its environment or flags (cmd/layervisor and the shim's
// command read the LAYERVISOR_* variables, docs/testing.md) and passes in;
// this package reads no environment. They are not recorded in uvm.json:
// a process that handles a UVM another made brings its own (SetHostOptions,
// GC, Reap). The zero value is the default behaviour.
type HostOptions struct {
	// Accel is "kvm" or "tcg"; anything else picks KVM when /dev/kvm is
	// usable and backed by hardware virtualization, else TCG.
	Accel string
	// Agent and GuestRuntime go into an initramfs Start builds when it is
	// missing (InitramfsOptions.Agent and Runtime; empty finds them).
	Agent, GuestRuntime string
	// KeepOnFailure keeps a failed UVM's state directory at Remove (and
	// at GC and Reap) for inspection, with a warning naming its logs; a UVM
	// that did not fail is removed whatever it says.
	KeepOnFailure bool
}

// Config describes a UVM.
type Config struct {
	ID   string `json:"id"`
	Root string `json:"root"` // layervisor state root; the UVM lives in <Root>/uvms/<ID>
	// BootDir has vmlinuz and lib/modules (default DefaultBootDir); Initrd
	// defaults to DefaultInitrd's, built when missing.
	BootDir         string `json:"bootDir"`
	Initrd          string `json:"initrd"`
	QEMU            string `json:"qemu"`
	MemoryMB        int    `json:"memoryMB"`
	CPUs            int    `json:"cpus"`
	SCSIControllers int    `json:"scsiControllers"`
	VPMemSlots      int    `json:"vpmemSlots"`
	VPMemMaxSize    uint64 `json:"vpmemMaxSize"`
	// PmemBudgetMB is the guest-physical space for pmem (maxmem − RAM).
	PmemBudgetMB int   `json:"pmemBudgetMB"`
	RootPorts    int   `json:"rootPorts"`
	ScratchSize  int64 `json:"scratchSize"`
	// BootTimeout bounds the wait for the agent.
	BootTimeout time.Duration `json:"bootTimeout"`
	// LongLived makes a UVM that runs until it is stopped (layervisor uvm
	// start). Otherwise the UVM belongs to the process that creates it: its
	// QEMU dies with that process and the next gc removes what is left.
	LongLived bool `json:"longLived,omitempty"`
	// WindowsTemplate makes a Windows utility VM: its sandbox.vhdx is a
	// differencing child of this SystemTemplate.vhdx (see winsandbox.go).
	// Such a UVM is provisioned here but cannot boot (no Hyper-V).
	WindowsTemplate string `json:"windowsTemplate,omitempty"`
	// Cold boots the kernel even when a template of this UVM's shape
	// exists (see template.go), and saves none.
	Cold bool `json:"cold,omitempty"`
	// Host are this process's settings, not recorded (see HostOptions).
	Host HostOptions `json:"-"`
}

func (c *Config) defaults() {
	if c.BootDir == "" {
		c.BootDir = DefaultBootDir
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = DefaultMemoryMB
	}
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.SCSIControllers == 0 {
		c.SCSIControllers = 1
	}
	if c.VPMemSlots == 0 {
		c.VPMemSlots = 16
	}
	if c.VPMemMaxSize == 0 {
		c.VPMemMaxSize = vpmem.DefaultMaxSize
	}
	if c.PmemBudgetMB == 0 {
		c.PmemBudgetMB = 4096
	}
	if c.RootPorts == 0 {
		c.RootPorts = c.VPMemSlots + 8 // pmem devices plus shares
	}
	if c.ScratchSize == 0 {
		c.ScratchSize = 1 << 30
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 60 * time.Second
	}
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidateID checks that id can name a state directory.
func ValidateID(id string) error {
	if !safeID.MatchString(id) {
		return fmt.Errorf("%w %q: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit", ErrInvalidID, id)
	}
	return nil
}

// State is what uvm.json records, for other processes and gc.
type State struct {
	Config Config `json:"config"`
	// Owner is the process the UVM belongs to; nil for a long-lived UVM.
	Owner   *Owner    `json:"owner,omitempty"`
	PID     int       `json:"pid,omitempty"`
	Status  string    `json:"status"` // created, running, stopped, failed
	Accel   string    `json:"accel,omitempty"`
	Started time.Time `json:"started,omitempty"`
	Error   string    `json:"error,omitempty"`
	// Template is the key of the template the UVM was restored from, ""
	// after a cold boot.
	Template string `json:"template,omitempty"`
}

// UVM is a utility VM.
type UVM struct {
	cfg Config
	dir string

	// lock is held on dir while this process creates, starts or owns the
	// UVM; opened is set for a UVM another process started (Open).
	lock   *dirLock
	opened bool

	mu       sync.Mutex
	state    State
	proc     *os.Process
	exited   chan struct{} // closed when QEMU exits (only in the starting process)
	exitErr  error
	qmp      *qmp.Client
	agent    *agent.Client
	ports    *pciports.Allocator
	nics     map[string]int // network cards by name: their root ports
	scsi     *scsi.Controller
	vpmem    *vpmem.Controller
	shares   *share.Controller
	shareHst *share.QEMUHost
	console  *consoleDrain // nil unless this process started the VM
	identity agent.IdentityResult
}

// Dir returns a UVM's state directory under root.
func Dir(root, id string) string { return filepath.Join(root, "uvms", id) }

func (u *UVM) path(name string) string { return filepath.Join(u.dir, name) }

// Create makes the UVM's state directory: its scratch (cloned from the
// scratch template, never copied in full), debug/ and crash/. An id that
// already exists, in any state, is refused. Unless cfg.LongLived, the UVM
// belongs to this process (see Config.LongLived) until Remove. On failure
// nothing is left.
func Create(ctx context.Context, cfg Config) (_ *UVM, err error) {
	if err := ValidateID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Root == "" {
		return nil, errors.New("uvm: Config.Root is empty")
	}
	cfg.defaults()
	if cfg.Initrd == "" {
		if cfg.Initrd, err = DefaultInitrd(cfg.Root, cfg.BootDir, cfg.Host); err != nil {
			return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
		}
	}
	if cfg.SCSIControllers < 1 || cfg.SCSIControllers > 4 {
		return nil, fmt.Errorf("uvm %s: %d SCSI controllers: want 1 to 4", cfg.ID, cfg.SCSIControllers)
	}
	if cfg.VPMemSlots < 0 || cfg.VPMemSlots > 256 {
		return nil, fmt.Errorf("uvm %s: %d VPMEM slots: want 0 to 256", cfg.ID, cfg.VPMemSlots)
	}
	u := &UVM{cfg: cfg, dir: Dir(cfg.Root, cfg.ID)}
	if err := os.MkdirAll(filepath.Dir(u.dir), 0o755); err != nil {
		return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
	}
	var lk *dirLock
	var ok bool
	// A gc may take the new, still empty directory for a dead create's
	// leftover and remove it before we lock it: then make it again.
	for try := 0; ; try++ {
		if err := os.Mkdir(u.dir, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
		}
		lk, ok, err = lockUVM(u.dir)
		if err == nil || !errors.Is(err, os.ErrNotExist) || try == 2 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s is in use by another process", ErrExists, cfg.ID)
	}
	u.lock = lk
	var un undo.Stack
	defer un.RunUnlessCommitted(ctx, &err)
	un.Push("unlock", func(context.Context) error { lk.release(); return nil })
	if st, err := Load(cfg.Root, cfg.ID); err == nil {
		return nil, fmt.Errorf("%w: %s (%s); remove it first: layervisor uvm rm %s", ErrExists, cfg.ID, st.Status, cfg.ID)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %s (unreadable state: %v); remove it first: layervisor uvm rm %s", ErrExists, cfg.ID, err, cfg.ID)
	}
	// The directory is new, or the leftover of a create that died before
	// recording anything (we hold its lock): either way it is ours to remove.
	un.Push("remove state dir", func(context.Context) error { return os.RemoveAll(u.dir) })
	for _, d := range []string{"debug", "crash"} {
		if err := os.MkdirAll(u.path(d), 0o750); err != nil {
			return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
		}
	}
	if cfg.WindowsTemplate != "" {
		if err := makeWindowsSandbox(u.path(WindowsSandbox), cfg.WindowsTemplate); err != nil {
			return nil, fmt.Errorf("uvm %s: %w", cfg.ID, err)
		}
	} else {
		tpl, err := scratch.EnsureTemplate(ctx, cfg.Root, cfg.ScratchSize)
		if err != nil {
			return nil, err
		}
		os.Remove(u.path("scratch.img")) // a leftover's
		if err := scratch.Clone(ctx, tpl, u.path("scratch.img")); err != nil {
			return nil, err
		}
	}
	u.state = State{Config: cfg, Status: "created"}
	if !cfg.LongLived {
		u.state.Owner = self()
	}
	if err := u.save(); err != nil {
		return nil, err
	}
	un.Commit()
	return u, nil
}

// Acquire takes a created or stopped long-lived UVM for Start in this
// process (a UVM that belongs to a process is started by it). It
// holds the UVM's lock (gc, create and other starts leave the UVM alone)
// until Close, Remove or the process's exit.
func Acquire(root, id string) (*UVM, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	dir := Dir(root, id)
	lk, ok, err := lockUVM(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("uvm %s: %w", id, err)
	}
	if !ok {
		return nil, fmt.Errorf("uvm %s is in use by another process (starting, or owned by a running command)", id)
	}
	st, err := Load(root, id)
	if err != nil {
		lk.release()
		return nil, err
	}
	if st.Status == "running" && alive(st.PID, dir) {
		lk.release()
		return nil, fmt.Errorf("uvm %s is already running (pid %d)", id, st.PID)
	}
	if st.Owner != nil {
		lk.release()
		return nil, fmt.Errorf("uvm %s belonged to %s, which is gone: layervisor gc removes it", id, st.Owner)
	}
	return &UVM{cfg: st.Config, dir: dir, state: *st, lock: lk}, nil
}

// Close releases this process's hold on the UVM without stopping it. For
// a UVM this process owns, that hands it to the next gc.
func (u *UVM) Close() { u.lock.release(); u.lock = nil }

func (u *UVM) save() error {
	u.mu.Lock()
	st := u.state
	u.mu.Unlock()
	return atomicfile.WriteJSON(u.path("uvm.json"), st, false)
}

// Load reads a UVM's recorded state.
func Load(root, id string) (*State, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	var st State
	if err := atomicfile.ReadJSON(filepath.Join(Dir(root, id), "uvm.json"), &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, err
	}
	return &st, nil
}

// ID returns the UVM's id.
func (u *UVM) ID() string { return u.cfg.ID }

// Config returns the UVM's configuration with defaults filled in.
func (u *UVM) Config() Config { return u.cfg }

// State returns the UVM's state.
func (u *UVM) State() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state
}

// Agent returns the guest agent client (nil before Start).
func (u *UVM) Agent() *agent.Client { return u.agent }

// QMP returns the QMP client (nil before Start).
func (u *UVM) QMP() *qmp.Client { return u.qmp }

// SCSI returns the SCSI controller; an error for a UVM not started by
// this process.
func (u *UVM) SCSI() (*scsi.Controller, error) {
	u.mu.Lock()
	c := u.scsi
	u.mu.Unlock()
	if c == nil {
		return nil, u.noControllers()
	}
	return c, nil
}

// VPMem returns the VPMEM controller; an error for a UVM not started by
// this process.
func (u *UVM) VPMem() (*vpmem.Controller, error) {
	u.mu.Lock()
	c := u.vpmem
	u.mu.Unlock()
	if c == nil {
		return nil, u.noControllers()
	}
	return c, nil
}

// Shares returns the share (virtiofs) controller; an error for a UVM not
// started by this process.
func (u *UVM) Shares() (*share.Controller, error) {
	u.mu.Lock()
	c := u.shares
	u.mu.Unlock()
	if c == nil {
		return nil, u.noControllers()
	}
	return c, nil
}

// noControllers says why a UVM has no attachment controllers.
func (u *UVM) noControllers() error {
	if u.opened {
		return fmt.Errorf("uvm %s: %w: attachments belong to the process that started the VM", u.cfg.ID, ErrNotOwner)
	}
	return fmt.Errorf("uvm %s: %w: start it first", u.cfg.ID, ErrNotReady)
}

// fail marks the UVM failed.
func (u *UVM) fail(err error) {
	u.mu.Lock()
	if u.state.Status != "stopped" {
		u.state.Status, u.state.Error = "failed", err.Error()
	}
	u.mu.Unlock()
	u.save()
}

// Failed reports whether the UVM has failed (QEMU died or the agent
// connection was lost).
func (u *UVM) Failed() bool { return u.State().Status == "failed" }

// SetHostOptions gives a UVM this process did not create (Acquire, Open)
// this process's settings.
func (u *UVM) SetHostOptions(h HostOptions) { u.cfg.Host = h }

// Remove deletes the state directory; idempotent. A failed UVM is kept
// with HostOptions.KeepOnFailure, with a warning naming the paths.
// A UVM another process is creating, starting or owns is refused.
func (u *UVM) Remove(ctx context.Context) error {
	if u.State().Status == "running" {
		return fmt.Errorf("uvm %s: stop it before removing it", u.cfg.ID)
	}
	if u.lock == nil {
		lk, ok, err := lockUVM(u.dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("uvm %s: %w", u.cfg.ID, err)
		}
		if !ok {
			return fmt.Errorf("uvm %s is in use by another process", u.cfg.ID)
		}
		u.lock = lk
	}
	defer func() { u.lock.release(); u.lock = nil }()
	if u.State().Status == "failed" && u.cfg.Host.KeepOnFailure {
		slog.Warn("keeping failed UVM state for inspection", "uvm", u.cfg.ID, "dir", u.dir,
			"console", u.path(consoleLog), "qemu_log", u.path("debug/qemu.log"))
		return nil
	}
	return removeDir(u.dir)
}

// removeDir unmounts what is mounted under dir (a share's file bind mounts
// left by a dead owner) and removes it.
func removeDir(dir string) error {
	err := unmountUnder(dir)
	return errors.Join(err, os.RemoveAll(dir))
}
