package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/uvm"
)

func newUVMCmd() *cobra.Command {
	return &cobra.Command{Use: "uvm", Short: "Create, start, use and remove utility VMs",
		Long: `A utility VM (UVM) is QEMU booting Debian's cloud kernel with layervisor's guest
agent as init. Containers' layers, scratch and mounts are hot-plugged into it
(VPMEM, SCSI, virtiofs). KVM is used when /dev/kvm is usable, TCG otherwise.`}
}

func newUVMCreateCmd(o *options) *cobra.Command {
	var cfg uvm.Config
	var memory, windowsImage string
	cmd := &cobra.Command{
		Use:   "create ID",
		Short: "Create a long-lived UVM's state directory and scratch (an existing ID is refused)",
		Long: `create makes a UVM's state directory (debug/, crash/) and its writable disk.

A Linux UVM gets a scratch cloned from a template. With --windows-image REF (an
imported Windows image whose base layer has a utility VM) or --template PATH (a
SystemTemplate.vhdx), it is a Windows utility VM: its sandbox.vhdx is a new
differencing VHDX whose parent is the template, so nothing is copied and the
template stays untouched. Windows utility VMs are provisioned, not booted: that
needs Hyper-V. uvm rm removes the directory.`,
		Example: `  layervisor uvm create vm1 --memory 1G && layervisor uvm start vm1
  layervisor uvm create win1 --windows-image windows-demo:latest
  layervisor uvm create win2 --template /path/to/UtilityVM/SystemTemplate.vhdx`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cfg
			c.ID, c.Root, c.LongLived = args[0], o.absRoot(), true
			env := envconfig.UVM()
			c.BootDir, c.Host = env.BootDir, env.Host
			if memory != "" {
				n, err := parseSize(memory)
				if err != nil {
					return fmt.Errorf("--memory: %w", err)
				}
				c.MemoryMB = int(n >> 20)
			}
			if windowsImage != "" {
				s, err := o.openStore()
				if err != nil {
					return err
				}
				if c.WindowsTemplate, err = s.UtilityVMTemplate(windowsImage); err != nil {
					return err
				}
			}
			if c.WindowsTemplate != "" {
				abs, err := filepath.Abs(c.WindowsTemplate)
				if err != nil {
					return err
				}
				c.WindowsTemplate = abs
			}
			u, err := uvm.Create(cmd.Context(), c)
			if err != nil {
				return err
			}
			return reportUVM(o, u.State())
		},
	}
	f := cmd.Flags()
	f.StringVar(&memory, "memory", "", "guest RAM (default 512M)")
	f.IntVar(&cfg.CPUs, "cpus", 0, "virtual CPUs (default 2)")
	f.IntVar(&cfg.SCSIControllers, "scsi-controllers", 0, "virtio-scsi controllers, 64 LUNs each (default 1, at most 4)")
	f.IntVar(&cfg.VPMemSlots, "vpmem-slots", 0, "persistent-memory slots for layers (default 16)")
	f.StringVar(&windowsImage, "windows-image", "", "make a Windows utility VM whose sandbox derives from this imported Windows image's SystemTemplate.vhdx")
	f.StringVar(&cfg.WindowsTemplate, "template", "", "make a Windows utility VM whose sandbox derives from this SystemTemplate.vhdx")
	cmd.MarkFlagsMutuallyExclusive("windows-image", "template")
	return cmd
}

func newUVMStartCmd(o *options) *cobra.Command {
	var cold bool
	cmd := &cobra.Command{
		Use:   "start ID",
		Short: "Boot a created UVM and wait for its agent; the VM keeps running after this command",
		Long: `start restores the UVM from a template of its shape when there is one (about a
second), else boots its kernel and saves the template for the next UVMs (see
layervisor uvm template). --cold always boots the kernel.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := uvm.Acquire(o.absRoot(), args[0])
			if err != nil {
				return err
			}
			defer u.Close()
			u.SetCold(cold || envconfig.TemplatesOff())
			u.SetHostOptions(envconfig.UVMHost())
			t0 := time.Now()
			if err := u.Start(cmd.Context()); err != nil {
				return err
			}
			if o.human() {
				fmt.Fprintf(os.Stderr, "uvm %s running (%s, agent ready in %s)\n", u.ID(), u.State().Accel, time.Since(t0).Round(time.Millisecond))
			}
			return reportUVM(o, u.State())
		},
	}
	cmd.Flags().BoolVar(&cold, "cold", false, "boot the kernel instead of restoring a template")
	return cmd
}

func newUVMExecCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:     "exec ID -- CMD [ARGS...]",
		Short:   "Run a command in a running UVM (outside any container) and exit with its code",
		Example: "  layervisor uvm exec vm1 -- /init --version",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.MinimumNArgs(2)(cmd, args); err != nil {
				return err
			}
			if cmd.ArgsLenAtDash() != 1 {
				return fmt.Errorf("usage: layervisor uvm exec ID -- CMD [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := uvm.Open(cmd.Context(), o.absRoot(), args[0])
			if err != nil {
				return err
			}
			defer u.Agent().Close()
			code, err := u.Agent().Exec(cmd.Context(), agent.ExecRequest{Args: args[1:], Stdout: os.Stdout, Stderr: os.Stderr})
			if agent.IsCode(err, agent.CodeExecNotFound) {
				fmt.Fprintln(os.Stderr, "layervisor:", err)
				return exitError{127}
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
}

func newUVMLsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List UVMs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sts, err := uvm.List(o.absRoot())
			if err != nil {
				return err
			}
			return printUVMs(cmd.Context(), o, sts)
		},
	}
}

func newUVMStopCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID",
		Short: "Shut a UVM down (agent, then QEMU quit, then kill)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := uvm.Open(cmd.Context(), o.absRoot(), args[0])
			if u == nil {
				return err
			}
			return u.Stop(cmd.Context())
		},
	}
}

func newUVMRmCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID",
		Short: "Stop (if running) and remove a UVM's state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := uvm.Open(cmd.Context(), o.absRoot(), args[0])
			if u == nil {
				return err
			}
			if err := u.Stop(cmd.Context()); err != nil {
				return err
			}
			u.SetHostOptions(envconfig.UVMHost())
			return u.Remove(cmd.Context())
		},
	}
}

func newUVMImageCmd() *cobra.Command {
	return &cobra.Command{Use: "image", Short: "Boot files of the utility VM"}
}

func newUVMImageBuildCmd(o *options) *cobra.Command {
	var img uvm.InitramfsOptions
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the UVM initramfs: the guest agent as /init plus the kernel modules it loads",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			env := envconfig.UVM()
			if img.BootDir == "" {
				img.BootDir = env.BootDir
			}
			if img.Agent == "" {
				img.Agent = env.Host.Agent
			}
			if img.Runtime == "" {
				img.Runtime = env.Host.GuestRuntime
			}
			if img.Out == "" {
				var err error
				if img.Out, err = uvm.DefaultInitrd(o.absRoot(), img.BootDir, uvm.HostOptions{Agent: img.Agent, GuestRuntime: img.Runtime}); err != nil {
					return err
				}
			}
			if err := uvm.BuildInitramfs(cmd.Context(), img); err != nil {
				return err
			}
			if o.json {
				return printJSON(img)
			}
			fmt.Println(img.Out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&img.BootDir, "kernel-dir", "", "boot dir with vmlinuz and lib/modules (default $LAYERVISOR_BOOT_DIR or "+uvm.DefaultBootDir+")")
	f.StringVar(&img.Agent, "agent", "", "guest agent binary (default $LAYERVISOR_AGENT, else "+uvm.AgentName+" next to layervisor, else on PATH)")
	f.StringVar(&img.Out, "out", "", "initramfs to write (default <root>/boot/initrd-<hash of its inputs>.img, the one UVMs of the root use)")
	return cmd
}

// reportUVM prints a UVM's state (--json), or its ID.
func reportUVM(o *options, st uvm.State) error {
	if o.json {
		return printJSON(st)
	}
	if !o.quiet {
		fmt.Println(st.Config.ID)
	}
	return nil
}
