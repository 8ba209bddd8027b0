package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/sysgc"
)

// parseSize reads sizes like 20G, 512M, 1048576.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	t = strings.TrimSuffix(t, "I")
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return v * mult, nil
}

func newContainerCmd() *cobra.Command {
	return &cobra.Command{Use: "container", Short: "Create, mount, unmount and remove containers' storage"}
}

func newContainerCreateCmd(o *options) *cobra.Command {
	var image, scratchSize, scratchFormat, shareWith string
	cmd := &cobra.Command{
		Use:   "create NAME --image REF",
		Short: "Create a container: record its layers and clone its scratch",
		Long: `Create records a container of an imported image and gives it a writable scratch
cloned from a cached ext4 template of the requested size (reflink where the file
system supports it, else a sparse copy of only the allocated extents).
With --share-scratch-with, the container uses another container's scratch (as
the containers of a pod share their sandbox's); each keeps its own upper dir.
--scratch-format vhdx keeps the scratch as a VHDX (a few MiB until written),
which utility VMs attach directly; the host path needs the raw default.`,
		Example: `  layervisor container create web --image demo:latest
  layervisor container create side --image demo:latest --share-scratch-with web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := store.ContainerOptions{ShareScratchWith: shareWith, ScratchFormat: diskformat.Format(scratchFormat)}
			if scratchSize != "" {
				n, err := parseSize(scratchSize)
				if err != nil {
					return fmt.Errorf("--scratch-size: %w", err)
				}
				opts.ScratchSize = n
			}
			s, err := o.openStore()
			if err != nil {
				return err
			}
			c, err := s.CreateContainer(cmd.Context(), args[0], image, opts)
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(c)
			}
			fmt.Println(c.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "image to use (required)")
	f.StringVar(&scratchSize, "scratch-size", "", "scratch virtual size, e.g. 20G (default 20G)")
	f.StringVar(&shareWith, "share-scratch-with", "", "use this container's scratch instead of a new one")
	f.StringVar(&scratchFormat, "scratch-format", "raw", "scratch disk format: raw (host and VM) or vhdx (VM only)")
	cmd.MarkFlagRequired("image")
	return cmd
}

// containerMount is what container mount prints with --json.
type containerMount struct {
	Name   string `json:"name"`
	Rootfs string `json:"rootfs"`
}

func newContainerMountCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "mount NAME",
		Short: "Mount the container's root file system on the host; prints its path",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			p, err := s.Mount(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(containerMount{Name: args[0], Rootfs: p})
			}
			fmt.Println(p)
			return nil
		},
	}
}

func newContainerUnmountCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "unmount NAME",
		Short: "Unmount the container's root file system",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			return s.Unmount(cmd.Context(), args[0])
		},
	}
}

func newContainerRmCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove containers (unmounting first) and their scratch",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := s.RemoveContainer(cmd.Context(), n); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func newContainerLsCmd(o *options) *cobra.Command {
	return listCommand(o, "List containers", (*store.Store).Containers, "NAME\tIMAGE\tLAYERS\tSCRATCH\tMOUNTED",
		func(c store.ContainerStatus) string {
			scr := humanBytes(c.ScratchSize)
			if c.SharesScratchOf != "" {
				scr = "shared with " + c.SharesScratchOf
			}
			m := "-"
			if c.Mounted {
				m = c.Rootfs
			}
			return fmt.Sprintf("%s\t%s\t%d\t%s\t%s", c.Name, c.Image, len(c.ChainIDs), scr, m)
		})
}

// gcResult is what gc prints with --json.
type gcResult = sysgc.Report

func newGCCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Reconcile after crashes and remove what nothing uses",
		Long: `gc rolls back incomplete mounts (complete ones stay usable), releases stray mounts
and loop devices, deletes temp files and half-written layers or containers, and
removes layers that no image or container refers to. It also reaps utility VMs
whose owner process died (a killed run's VM) or whose QEMU died, kills QEMU and
virtiofsd processes that no live UVM accounts for, removes stale UVM templates and
the initramfs files no UVM or template uses (the newest stays), and removes the
containers of runs that died before their teardown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			res, gcErr := sysgc.Run(cmd.Context(), s, sysgc.Options{UVMHost: envconfig.UVMHost(), OCIRuntime: envconfig.OCIRuntime()})
			if o.json {
				if err := printJSON(res); err != nil {
					return errors.Join(err, gcErr)
				}
			} else if !o.quiet {
				rep, vrep := res.Store, res.UVMs
				fmt.Printf("removed %d layers, %d temp entries; rolled back %d mounts, unmounted %d, detached %d loop devices, kept %d mounted containers; reaped %d dead UVMs and %d dead runs' containers, killed %d orphan QEMU/virtiofsd processes; removed %d stale UVM templates and %d unused initramfs files\n",
					len(rep.RemovedLayers), len(rep.RemovedTemp), len(rep.Mounts.RolledBack), len(rep.Mounts.Unmounted), len(rep.Mounts.Detached), len(rep.Mounts.Kept), len(vrep.Reaped), len(res.DeadRuns), len(vrep.Killed), len(vrep.Templates), len(vrep.Initrds))
			}
			return gcErr
		},
	}
}
