package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/internal/logctx"
	"github.com/layervisor/layervisor/pkg/snapshotter"
	"github.com/layervisor/layervisor/pkg/store"
)

// newRootCmd builds the command tree. It is the one place that lists every
// command: each is made by its constructor, with the shared options.
func newRootCmd() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "layervisor",
		Short: "Container layer storage for process- and VM-isolated containers",
		Long: `layervisor imports OCI image layers into a content-addressed store, gives each
container a writable scratch cloned from a template, and assembles the container's
root filesystem on the host (loop devices + overlayfs) or inside a utility VM (QEMU
+ guest agent). It also reads and writes Windows container artifacts (VHD/VHDX
disks, registry hives) in pure Go.

State lives under --root (default /var/lib/layervisor). Human output by default;
--json prints machine-readable output for scripts.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(*cobra.Command, []string) error { return o.setUpLogging() },
	}
	o.addFlags(root)
	return withCommands(root,
		withCommands(newImageCmd(), newImageImportCmd(o), newImageLsCmd(o), newImageRmCmd(o)),
		withCommands(newLayerCmd(), newLayerLsCmd(o)),
		withCommands(newContainerCmd(),
			newContainerCreateCmd(o), newContainerMountCmd(o), newContainerUnmountCmd(o),
			newContainerRmCmd(o), newContainerLsCmd(o)),
		newGCCmd(o),
		newRunCmd(o),   // Linux only
		newServeCmd(o), // Linux only
		withCommands(newUVMCmd(),
			newUVMCreateCmd(o), newUVMStartCmd(o), newUVMExecCmd(o), newUVMLsCmd(o),
			newUVMStopCmd(o), newUVMRmCmd(o),
			withCommands(newUVMImageCmd(), newUVMImageBuildCmd(o)),
			withCommands(newUVMTemplateCmd(), newUVMTemplateLsCmd(o), newUVMTemplateRmCmd(o))),
		withCommands(newDiskCmd(),
			newDiskCreateCmd(o), newDiskConvertCmd(o), newDiskInfoCmd(o), newDiskCheckCmd(o)),
		withCommands(newHiveCmd(),
			newHiveCreateCmd(), newHiveDumpCmd(o), newHiveGetCmd(o), newHiveSetCmd(),
			newHiveDeleteCmd(), newHiveImportCmd(), newHiveExportCmd(), newHiveMergeCmd(o),
			newHiveDiffCmd(), newHiveCimbootCmd()),
		withCommands(newCimCmd(), newCimLsCmd(o), newCimStatCmd(o), newCimCatCmd(), newCimExtractCmd(o)),
		withCommands(newWclayerCmd(), newWclayerImportCmd(o), newWclayerExportCmd(o)),
		withCommands(newDevCmd(), newDevBuildImageCmd(), newDevBuildWclayerCmd(o)),
	)
}

// withCommands adds children to parent and returns parent. A nil child is
// a command this operating system does not have.
func withCommands(parent *cobra.Command, children ...*cobra.Command) *cobra.Command {
	for _, c := range children {
		if c != nil {
			parent.AddCommand(c)
		}
	}
	return parent
}

// options are the flags every command shares (the root's persistent
// flags).
type options struct {
	root     string
	json     bool
	quiet    bool
	logLevel string
}

func (o *options) addFlags(root *cobra.Command) {
	pf := root.PersistentFlags()
	def := os.Getenv("LAYERVISOR_ROOT")
	if def == "" {
		def = "/var/lib/layervisor"
	}
	pf.StringVar(&o.root, "root", def, "state directory (env LAYERVISOR_ROOT)")
	pf.BoolVar(&o.json, "json", false, "print machine-readable JSON")
	pf.BoolVarP(&o.quiet, "quiet", "q", false, "no progress output")
	pf.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
}

func (o *options) setUpLogging() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", o.logLevel, err)
	}
	// Records logged with a request's context carry its identity (serve:
	// the namespace, the snapshot key).
	slog.SetDefault(slog.New(logctx.NewHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))))
	return nil
}

// human reports whether to print what is meant for people only: progress
// and confirmations (neither --quiet nor --json).
func (o *options) human() bool { return !o.quiet && !o.json }

// openStore opens the store with what every command needs registered on
// it: the layers the containerd snapshotter's snapshots use (`layervisor
// serve`, maybe running beside this command) are kept by gc.
func (o *options) openStore() (*store.Store, error) {
	st, err := store.Open(o.root)
	if err != nil {
		return nil, err
	}
	snapshotter.RegisterPinner(st)
	return st, nil
}

// absRoot is --root made absolute (UVMs record it).
func (o *options) absRoot() string {
	r, err := filepath.Abs(o.root)
	if err != nil {
		return o.root
	}
	return r
}

// printJSON writes v as indented JSON on stdout. What each command prints
// is the scripting contract of README.md, pinned by TestJSONFieldNames.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// optArg is args[i], or "" when there are fewer arguments.
func optArg(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}
