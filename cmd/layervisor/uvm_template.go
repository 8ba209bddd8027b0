package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/uvm"
)

func newUVMTemplateCmd() *cobra.Command {
	return &cobra.Command{Use: "template", Short: "Saved utility VM templates (UVMs start from them in about a second)",
		Long: `The first utility VM of a shape (kernel, initramfs and agent, QEMU version,
memory, CPUs, controllers, accelerator) boots its kernel and saves itself, right
after its agent answered, as a template in <root>/templates/<key>/: QEMU's device
state and the guest RAM file. Later UVMs of that shape restore it instead of
booting. A template that no longer matches its inputs is not used (the next UVM
boots and saves it again); gc removes stale ones.`}
}

func newUVMTemplateLsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List templates, with their shape, size on disk and whether they are stale",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := uvm.ListTemplates(o.absRoot())
			if err != nil {
				return err
			}
			if o.json {
				if ts == nil {
					ts = []uvm.TemplateInfo{}
				}
				return printJSON(ts)
			}
			fmt.Printf("%-32s %-6s %-5s %-7s %-9s %-20s %s\n", "KEY", "ACCEL", "CPUS", "MEMORY", "DISK", "CREATED", "STATUS")
			for _, t := range ts {
				status := "ok"
				if t.Stale != "" {
					status = "stale: " + t.Stale
				}
				accel, cpus, mem, created := "?", 0, 0, ""
				if m := t.Manifest; m != nil {
					accel, cpus, mem, created = m.Shape.Accel, m.Shape.CPUs, m.Shape.MemoryMB, m.Created.Local().Format(time.DateTime)
				}
				fmt.Printf("%-32s %-6s %-5d %-7s %-9s %-20s %s\n", t.Key, accel, cpus, fmt.Sprintf("%dM", mem), fmt.Sprintf("%dM", t.DiskBytes>>20), created, status)
			}
			return nil
		},
	}
}

func newUVMTemplateRmCmd(o *options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "rm KEY... | --all",
		Short: "Remove templates (running UVMs restored from them are not affected)",
		Args: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("give template keys (layervisor uvm template ls) or --all")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if all {
				ts, err := uvm.ListTemplates(o.absRoot())
				if err != nil {
					return err
				}
				for _, t := range ts {
					args = append(args, t.Key)
				}
			}
			var errs []error
			for _, k := range args {
				if err := uvm.RemoveTemplate(o.absRoot(), k); err != nil {
					errs = append(errs, err)
				} else if o.human() {
					fmt.Println(k)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "remove every template")
	return cmd
}

// uvmRow is a line of uvm ls: the recorded state, the memory measured
// now (running UVMs only) and whether it was restored from a template.
type uvmRow struct {
	uvm.State
	Memory *uvm.Memory `json:"memory,omitempty"`
}

func printUVMs(ctx context.Context, o *options, sts []uvm.State) error {
	rows := []uvmRow{}
	for _, s := range sts {
		r := uvmRow{State: s}
		if s.Status == "running" {
			m := uvm.MemoryUse(ctx, o.absRoot(), s.Config.ID)
			r.Memory = &m
		}
		rows = append(rows, r)
	}
	if o.json {
		return printJSON(rows)
	}
	mib := func(n int64) string {
		if n < 0 {
			return "-"
		}
		return fmt.Sprintf("%dM", n>>20)
	}
	fmt.Printf("%-20s %-8s %-8s %-6s %-7s %-9s %-10s %s\n", "ID", "STATUS", "PID", "ACCEL", "MEMORY", "HOST-RSS", "GUEST-USED", "BOOT")
	for _, r := range rows {
		rss, used := "-", "-"
		if r.Memory != nil {
			rss, used = mib(r.Memory.HostRSS), mib(r.Memory.GuestUsed)
		}
		boot := "cold"
		if r.Template != "" {
			boot = "template " + r.Template[:8]
		}
		fmt.Printf("%-20s %-8s %-8d %-6s %-7s %-9s %-10s %s\n", r.Config.ID, r.Status, r.PID, r.Accel, fmt.Sprintf("%dM", r.Config.MemoryMB), rss, used, boot)
	}
	return nil
}
