// Package envconfig reads the LAYERVISOR_* environment variables that
// layervisor's programs (cmd/layervisor and containerd-shim-layervisor-v1)
// share into the configuration the libraries take: no library reads the
// environment. docs/testing.md lists the variables.
package envconfig

import (
	"os"

	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// The variables read here.
const (
	// BootDir is the utility VM's kernel and modules directory
	// (uvm.Config.BootDir; default uvm.DefaultBootDir).
	BootDir = "LAYERVISOR_BOOT_DIR"
	// Accel is kvm or tcg: the accelerator, instead of the automatic
	// choice (uvm.HostOptions.Accel).
	Accel = "LAYERVISOR_ACCEL"
	// Agent is the guest agent binary (uvm.HostOptions.Agent; default:
	// beside the program, else on PATH).
	Agent = "LAYERVISOR_AGENT"
	// GuestRuntime is the OCI runtime packed into the initramfs
	// (uvm.HostOptions.GuestRuntime; default: crun, else runc, on PATH).
	GuestRuntime = "LAYERVISOR_GUEST_RUNTIME"
	// HostRuntime is the OCI runtime binary of process-isolated runs and
	// of gc's clean-up after them (procrun.Config.Runtime; default: crun,
	// else runc, on PATH).
	HostRuntime = "LAYERVISOR_OCI_RUNTIME"
	// Templates set to "off" boots every UVM cold (uvm.Config.Cold).
	Templates = "LAYERVISOR_UVM_TEMPLATES"
	// KeepOnFailure set to "1" keeps a failed UVM's state
	// (uvm.HostOptions.KeepOnFailure).
	KeepOnFailure = "LAYERVISOR_KEEP_UVM_ON_FAILURE"
	// CrashAt names the point at which the process kills itself
	// (internal/crashpoint; crash tests).
	CrashAt = "LAYERVISOR_CRASH_AT"
)

// UVM is the utility VM configuration the environment gives: BootDir (never
// empty), Cold and Host. The caller sets the rest.
func UVM() uvm.Config {
	boot := os.Getenv(BootDir)
	if boot == "" {
		boot = uvm.DefaultBootDir
	}
	return uvm.Config{BootDir: boot, Cold: TemplatesOff(), Host: UVMHost()}
}

// TemplatesOff says whether UVM templates are off: every UVM boots cold.
func TemplatesOff() bool { return os.Getenv(Templates) == "off" }

// UVMHost is this process's utility VM settings from the environment.
func UVMHost() uvm.HostOptions {
	return uvm.HostOptions{
		Accel:         os.Getenv(Accel),
		Agent:         os.Getenv(Agent),
		GuestRuntime:  os.Getenv(GuestRuntime),
		KeepOnFailure: os.Getenv(KeepOnFailure) == "1",
	}
}

// OCIRuntime is the host's OCI runtime binary ($LAYERVISOR_OCI_RUNTIME;
// empty: found on PATH).
func OCIRuntime() string { return os.Getenv(HostRuntime) }

// ArmCrashPoint arms the crash point LAYERVISOR_CRASH_AT names, if any.
func ArmCrashPoint() { crashpoint.Arm(os.Getenv(CrashAt)) }
