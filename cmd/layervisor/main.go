// Command layervisor is the CLI over layervisor's Go packages: image import,
// layer store, containers, utility VMs, disks and registry hives.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// globals holds the flags every subcommand shares.
type globals struct {
	root     string
	json     bool
	quiet    bool
	logLevel string
}

var g globals

// exitError carries a process exit code through cobra (for `run`).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

var rootCmd = &cobra.Command{
	Use:   "layervisor",
	Short: "Container layer storage for process- and VM-isolated containers",
	Long: `layervisor imports OCI image layers into a content-addressed store, gives each
container a writable scratch cloned from a template, and assembles the container's
root filesystem on the host (loop devices + overlayfs) or inside a utility VM (QEMU
+ guest agent). It also reads and writes Windows container artifacts (VHD/VHDX
disks, registry hives) in pure Go.

State lives under --root (default /var/lib/layervisor). Human output by default;
--json prints machine-readable output for scripts.`,
	SilenceUsage:  true,
	SilenceErrors: true,
	PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
			return fmt.Errorf("--log-level %q: %w", g.logLevel, err)
		}
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
		return nil
	},
}

func init() {
	pf := rootCmd.PersistentFlags()
	def := os.Getenv("LAYERVISOR_ROOT")
	if def == "" {
		def = "/var/lib/layervisor"
	}
	pf.StringVar(&g.root, "root", def, "state directory (env LAYERVISOR_ROOT)")
	pf.BoolVar(&g.json, "json", false, "print machine-readable JSON")
	pf.BoolVarP(&g.quiet, "quiet", "q", false, "no progress output")
	pf.StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
}

// printJSON writes v as indented JSON on stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := rootCmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "layervisor:", err)
		os.Exit(1)
	}
}
