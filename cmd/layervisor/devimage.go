package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

func newDevCmd() *cobra.Command {
	return &cobra.Command{Use: "dev", Short: "Developer tools: build test and demo images"}
}

func newDevBuildImageCmd() *cobra.Command {
	var kind, format, name, comp string
	var layers int
	var sizeMB int64
	build := &cobra.Command{
		Use:   "build-image OUT",
		Short: "Write a demo, busybox or benchmark image (needs busybox-static)",
		Long: `build-image writes a real image made from Debian's static busybox:
  demo     busybox plus layers that change, delete (whiteout) and replace (opaque)
           files, with a hard link and a symlink, mixing gzip, zstd and plain layers
  busybox  the busybox layer alone
  bench    --layers layers totalling about --size-mb MiB of generated content`,
		Example: `  layervisor dev build-image --kind demo --format docker-tar demo.tar
  layervisor dev build-image --kind bench --layers 10 --size-mb 300 --format oci-tar bench.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im imagebuild.Image
			var err error
			switch kind {
			case "demo":
				im, err = imagebuild.Demo(name)
			case "busybox":
				var l imagebuild.Layer
				l, err = imagebuild.BusyboxBase()
				im = imagebuild.Image{Name: name, Layers: []imagebuild.Layer{l}}
			case "bench":
				im, err = imagebuild.Bench(name, layers, sizeMB, imagebuild.Compression(comp))
			case "windows":
				im, err = imagebuild.Windows(name)
			default:
				return fmt.Errorf("--kind %q: want demo, busybox, bench or windows", kind)
			}
			if err != nil {
				return err
			}
			return im.Write(imagebuild.Format(format), args[0])
		},
	}
	f := build.Flags()
	f.StringVar(&kind, "kind", "demo", "demo, busybox, bench or windows (synthetic windows/amd64 image with a utility VM)")
	f.StringVar(&format, "format", "oci-tar", "oci-dir, oci-tar or docker-tar")
	f.StringVar(&name, "name", "demo:latest", "image reference recorded in the archive")
	f.IntVar(&layers, "layers", 10, "bench: number of layers")
	f.Int64Var(&sizeMB, "size-mb", 300, "bench: total size in MiB")
	f.StringVar(&comp, "compression", "gzip", "bench: gzip, zstd or none")
	return build
}
