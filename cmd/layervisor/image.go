package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/layervisor/layervisor/pkg/store"
)

func newImageCmd() *cobra.Command {
	return &cobra.Command{Use: "image", Short: "Import, list and remove images"}
}

func newImageImportCmd(o *options) *cobra.Command {
	var imp store.ImportOptions
	cmd := &cobra.Command{
		Use:   "import PATH",
		Short: "Import an OCI layout directory, OCI layout tar or docker-save tar",
		Long: `Import reads an image, verifies every blob digest and layer diffID, and converts
each layer not yet in the store into a read-only ext4 image with a VHD footer
(layers/<chain-id>/layer.vhd). Layers are converted in parallel; layers already
present are reused. Compressed layers may be gzip, zstd or uncompressed.`,
		Example: `  layervisor image import ./busybox-oci
  layervisor image import --name demo:latest demo.tar
  layervisor image import --platform linux/arm64 multi-arch.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			var bar *progressBar
			if o.human() && term.IsTerminal(int(os.Stderr.Fd())) {
				bar = newProgressBar()
				imp.Progress = bar.update
			}
			start := time.Now()
			res, err := s.Import(cmd.Context(), args[0], imp)
			if bar != nil {
				bar.finish()
			}
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(res)
			}
			fmt.Printf("imported %s (%d layers: %d converted, %d reused) in %s\n",
				res.Image.Name, len(res.Image.ChainIDs), res.Converted, res.Reused, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&imp.Name, "name", "", "name to record the image under (default: the name in the archive)")
	f.StringVar(&imp.Platform, "platform", "", "os/arch[/variant] to pick from a multi-platform image (default linux/amd64)")
	f.BoolVar(&imp.ForceUtilityVM, "force-uvm", false, "Windows images: prepare the base layer's utility VM for CIM boot even if its build is 20348 or older")
	f.IntVar(&imp.Parallel, "parallel", 0, "layers converted at once (default: number of CPUs)")
	return cmd
}

func newImageLsCmd(o *options) *cobra.Command {
	return listCommand(o, "List images", (*store.Store).Images, "NAME\tMANIFEST\tLAYERS\tSIZE",
		func(im store.Image) string {
			return fmt.Sprintf("%s\t%s\t%d\t%s", im.Name, short(im.ManifestDigest.String()), len(im.ChainIDs), humanBytes(im.Size))
		})
}

func newImageRmCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images (refused while a container uses one); gc removes unused layers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := s.RemoveImage(cmd.Context(), n); err != nil {
					return err
				}
				if o.human() {
					fmt.Println(n)
				}
			}
			return nil
		},
	}
}

func newLayerCmd() *cobra.Command {
	return &cobra.Command{Use: "layer", Short: "Inspect stored layers"}
}

func newLayerLsCmd(o *options) *cobra.Command {
	return listCommand(o, "List stored layers and what uses them", (*store.Store).Layers, "CHAIN ID\tSIZE\tENTRIES\tIMAGES\tCONTAINERS",
		func(l store.LayerInfo) string {
			return fmt.Sprintf("%s\t%s\t%d\t%s\t%s", short(l.ChainID.String()), humanBytes(l.Size), l.Entries,
				strings.Join(l.Images, ","), strings.Join(l.Container, ","))
		})
}

// listCommand makes an "ls" command: a table for people, JSON for scripts.
func listCommand[T any](o *options, short string, list func(*store.Store) ([]T, error), header string, row func(T) string) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.openStore()
			if err != nil {
				return err
			}
			items, err := list(s)
			if err != nil {
				return err
			}
			if o.json {
				if items == nil {
					items = []T{}
				}
				return printJSON(items)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, header)
			for _, it := range items {
				fmt.Fprintln(tw, row(it))
			}
			return tw.Flush()
		},
	}
}

func short(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[i+1 : i+13]
	}
	return d
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progressBar draws one status line on stderr for a terminal.
type progressBar struct {
	mu     sync.Mutex
	layers map[int]store.ImportProgress
	total  int
	last   time.Time
}

func newProgressBar() *progressBar { return &progressBar{layers: map[int]store.ImportProgress{}} }

func (p *progressBar) update(ev store.ImportProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layers[ev.Layer] = ev
	p.total = ev.Layers
	if time.Since(p.last) < 100*time.Millisecond && ev.State == "converting" {
		return
	}
	p.last = time.Now()
	done, reused := 0, 0
	var bytes int64
	for _, l := range p.layers {
		bytes += l.Bytes
		switch l.State {
		case "done":
			done++
		case "exists":
			reused++
		}
	}
	const width = 30
	filled := 0
	if p.total > 0 {
		filled = (done + reused) * width / p.total
	}
	fmt.Fprintf(os.Stderr, "\r[%s%s] layers %d/%d (%d reused)  %s converted ",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done+reused, p.total, reused, humanBytes(bytes))
}

func (p *progressBar) finish() {
	fmt.Fprint(os.Stderr, "\r\033[K")
}
