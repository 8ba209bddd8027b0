package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// inTerminal runs a shell command line under a real pseudo-terminal
// (util-linux script), as an interactive user would, and returns what the
// terminal showed. Its input never ends (a pipe kept open), so a read in
// the caller's shell sees only what reached the terminal's input queue.
func inTerminal(t *testing.T, line string) string {
	t.Helper()
	testutil.NeedTool(t, "script")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
	// script runs the line with $SHELL; the probe needs bash's read -t,
	// and CI may have no SHELL (dash's read has no -t).
	cmd.Env = append(os.Environ(), "SHELL=/bin/bash")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	cmd.Stdin = pr
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	pr.Close()
	if err != nil {
		t.Logf("script %q: %v", line, err)
	}
	return strings.ReplaceAll(out.String(), "\r", "")
}

// allowLegacyTIOCSTI turns the kernel's TIOCSTI on for the test where the
// host turned it off (dev.tty.legacy_tiocsti, Linux 6.2+), so the attack
// is tried for real on every machine; the setting is restored after.
func allowLegacyTIOCSTI(t *testing.T) {
	const knob = "/proc/sys/dev/tty/legacy_tiocsti"
	old, err := os.ReadFile(knob)
	if err != nil || strings.TrimSpace(string(old)) == "1" {
		return // older kernels always allow it
	}
	if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
		t.Fatalf("enable %s for the attack: %v", knob, err)
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0o644) })
}

// A container cannot type into the terminal of the shell that started it
// (TIOCSTI), with or without -t, in either mode; with -t it has a terminal
// of its own. The same attack run on the host shows the harness detects it.
func TestRunTerminal(t *testing.T) {
	c := vmCLI(t)
	img := confineImages(t)["confine"]
	if _, errs, code := c.run("image", "import", "--name", "confine:latest", img); code != 0 {
		t.Fatal(errs)
	}
	const probe = "read -t 3 l; echo \"after=[$l]\""
	allowLegacyTIOCSTI(t)
	// Control: the attack itself works on this kernel when the terminal is reachable.
	sti := filepath.Join(t.TempDir(), "sti")
	build := exec.Command("go", "build", "-o", sti, "./testdata/sti")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build sti: %v %s", err, out)
	}
	if out := inTerminal(t, sti+" echo PWNED; "+probe); !strings.Contains(out, "after=[echo PWNED]") {
		t.Fatalf("control: TIOCSTI from a process on the terminal did not reach the shell (is dev.tty.legacy_tiocsti 0?): %q", out)
	}
	lv := fmt.Sprintf("%s --root %s", c.bin, c.root)
	for _, mode := range []string{"process", "vm"} {
		for _, tty := range []string{"", "-t "} {
			line := fmt.Sprintf("%s run --isolation %s %sconfine:latest -- /sti echo PWNED; %s", lv, mode, tty, probe)
			out := inTerminal(t, line)
			if !strings.Contains(out, "after=[]") || strings.Contains(out, "after=[echo") {
				t.Errorf("%s %s: the container reached the caller's terminal: %q", mode, tty, out)
			}
			if !strings.Contains(out, "/dev/tty: ") {
				t.Errorf("%s %s: sti did not run: %q", mode, tty, out)
			}
			if tty == "" && !strings.Contains(out, "/dev/tty: open /dev/tty: no such device or address") {
				t.Errorf("%s: without -t the container has a controlling terminal: %q", mode, out)
			}
		}
		out := inTerminal(t, fmt.Sprintf("stty rows 33 cols 91; %s run --isolation %s -t confine:latest -- sh -c 'tty; stty size; test -t 0 && echo stdin-is-tty'", lv, mode))
		for _, w := range []string{"/dev/pts/0", "33 91", "stdin-is-tty"} {
			if !strings.Contains(out, w) {
				t.Errorf("%s -t: want %q in %q", mode, w, out)
			}
		}
	}
	if out, errs, code := c.run("run", "-t", "confine:latest", "--", "true"); code == 0 || !strings.Contains(errs, "-t: standard input is not a terminal") {
		t.Errorf("-t without a terminal: exit %d %q %q", code, out, errs)
	}
	// The reference gives a container a terminal of its own too.
	ctx := context.Background()
	d, err := containerdtest.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if err := d.Import(ctx, img); err != nil {
		t.Fatal(err)
	}
	out := inTerminal(t, fmt.Sprintf("ctr -a %s -n bench run --rm -t confine:latest tty-ref tty", d.Socket))
	if !strings.Contains(out, "/dev/pts/0") {
		t.Errorf("reference ctr run -t: %q", out)
	}
}

// Ctrl-C and SIGTERM reach the container's init; one that ignores them is
// killed after --stop-timeout; the exit code is the container's.
func TestRunSignals(t *testing.T) {
	c := vmCLI(t)
	img := confineImages(t)["confine"]
	if _, errs, code := c.run("image", "import", "--name", "confine:latest", img); code != 0 {
		t.Fatal(errs)
	}
	start := func(mode string, args ...string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
		cmd := exec.Command(c.bin, append([]string{"--root", c.root, "run", "--isolation", mode}, args...)...)
		cmd.Env = append(os.Environ(), c.env...)
		pr, pw := io.Pipe()
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = pw, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { cmd.Wait(); pw.Close() }()
		return cmd, bufio.NewReader(pr), &errb
	}
	waitLine := func(r *bufio.Reader, want string) string {
		var all strings.Builder
		for {
			l, err := r.ReadString('\n')
			all.WriteString(l)
			if strings.Contains(l, want) || err != nil {
				return all.String()
			}
		}
	}
	for _, mode := range []string{"process", "vm"} {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
			script := fmt.Sprintf(`trap "echo got %d; exit 5" %d; echo ready; while true; do sleep 0.1; done`, sig, sig)
			cmd, r, errb := start(mode, "confine:latest", "--", "sh", "-c", script)
			if out := waitLine(r, "ready"); !strings.Contains(out, "ready") {
				t.Fatalf("%s: no ready: %q %s", mode, out, errb)
			}
			cmd.Process.Signal(sig)
			rest := waitLine(r, "never")
			for cmd.ProcessState == nil {
				time.Sleep(10 * time.Millisecond)
			}
			if code := cmd.ProcessState.ExitCode(); code != 5 || !strings.Contains(rest, fmt.Sprintf("got %d", sig)) {
				t.Errorf("%s %v: exit %d, output %q, stderr %s", mode, sig, code, rest, errb)
			}
		}
		// An init that ignores SIGTERM is killed after the stop timeout.
		cmd, r, errb := start(mode, "--stop-timeout", "1s", "confine:latest", "--", "sh", "-c", "echo ready; exec sleep 60")
		waitLine(r, "ready")
		cmd.Process.Signal(syscall.SIGTERM)
		waitLine(r, "never")
		for cmd.ProcessState == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if code := cmd.ProcessState.ExitCode(); code != 137 {
			t.Errorf("%s: an init ignoring SIGTERM: exit %d, want 137; stderr %s", mode, code, errb)
		}
	}
}

// What the image or the flags name wrongly is refused with an error naming
// it, before the container runs, and nothing is left (checked by the
// CLI's leak check: containers, mounts, loop devices, runtime state,
// bundles, cgroups).
func TestRunBadInput(t *testing.T) {
	c := vmCLI(t)
	imgs := confineImages(t)
	for _, name := range []string{"confine", "appuser"} {
		if _, errs, code := c.run("image", "import", "--name", name+":latest", imgs[name]); code != 0 {
			t.Fatal(errs)
		}
	}
	for _, mode := range []string{"process", "vm"} {
		for _, tc := range []struct {
			args []string
			want string
			code int
		}{
			{[]string{"-u", "nobody", "confine:latest", "--", "true"}, `user "nobody": not found`, 1},
			{[]string{"-u", "app:wheel", "confine:latest", "--", "true"}, `user "app:wheel": not found`, 1},
			{[]string{"confine:latest", "--", "/no/such/entrypoint"}, `command "/no/such/entrypoint": not found`, 127},
			{[]string{"--entrypoint", "nosuch", "confine:latest"}, `command "nosuch": not found`, 127},
			{[]string{"--memory", "2m", "confine:latest", "--", "true"}, `--memory "2m": below the minimum of 6 MiB`, 1},
			{[]string{"--security-opt", "seccomp=/no/such/profile.json", "confine:latest", "--", "true"}, "seccomp=/no/such/profile.json", 1},
			{[]string{"--cap-add", "NOT_A_CAP", "confine:latest", "--", "true"}, `--cap-add "NOT_A_CAP": unknown capability`, 1},
			{[]string{"--network", "bridge", "confine:latest", "--", "true"}, `--network "bridge"`, 1},
		} {
			args := append([]string{"run", "--isolation", mode}, tc.args...)
			out, errs, code := c.run(args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Errorf("%s %v: exit %d, stderr %q, stdout %q; want exit %d and %q", mode, tc.args, code, errs, out, tc.code, tc.want)
			}
		}
	}
	if ls, _, _ := c.run("container", "ls", "--json"); strings.TrimSpace(ls) != "[]" {
		t.Errorf("containers left: %s", ls)
	}
}

// A guest that stops answering (its QEMU stopped) cannot hold a run: after
// Ctrl-C the run gives up on the container and leaves no QEMU behind.
func TestRunVMGuestStopsAnswering(t *testing.T) {
	c := vmCLI(t)
	c.ok("image", "import", "--name", "demo", demoImage(t, "oci-tar"))
	cmd := exec.Command(c.bin, "--root", c.root, "run", "--isolation", "vm", "--stop-timeout", "1s", "demo", "--", "sh", "-c", "echo ready; exec sleep 600")
	pr, pw := io.Pipe()
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = pw, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	if l, _ := bufio.NewReader(pr).ReadString('\n'); !strings.Contains(l, "ready") {
		t.Fatalf("no ready: %q %s", l, errb.String())
	}
	go io.Copy(io.Discard, pr)
	pids := uvm.QEMUProcesses(c.root)
	if len(pids) != 1 {
		t.Fatalf("QEMU processes %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGSTOP)
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("the run hung on a guest that does not answer; stderr %s", errb.String())
	}
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(errb.String(), "giving up") {
		t.Errorf("exit %d, stderr %s", cmd.ProcessState.ExitCode(), errb.String())
	}
	if left := uvm.QEMUProcesses(c.root); len(left) > 0 {
		t.Errorf("QEMU left behind: %v", left)
	}
}
