// Command layervisor is the CLI over layervisor's Go packages: image import,
// layer store, containers, utility VMs, disks and registry hives.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
)

// exitError carries a process exit code through cobra (for `run`).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	envconfig.ArmCrashPoint()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
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
