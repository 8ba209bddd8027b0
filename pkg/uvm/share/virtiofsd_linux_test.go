package share

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug/hotplugtest"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

// procStatus reads the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// leaves are the processes of pid's tree that have no children: those
// that do the work after the daemon's sandboxing forks.
func leaves(t *testing.T, pid int) []int {
	t.Helper()
	children := map[int][]int{}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		child, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		parent, _ := strconv.Atoi(f[1])
		children[parent] = append(children[parent], child)
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		if len(children[p]) == 0 {
			out = append(out, p)
		}
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return out
}

// The daemon serving a share (read-only or not) is sandboxed: the process
// that serves runs under a seccomp filter, in its own mount namespace
// (the shared directory as its root), without CAP_MKNOD or CAP_SYS_ADMIN.
func TestVirtiofsdSandboxed(t *testing.T) {
	testutil.NeedRoot(t)
	if _, err := os.Stat(DefaultVirtiofsd()); err != nil {
		testutil.Unavailable(t, err.Error())
	}
	q := hotplugtest.Start(t)
	h := NewQEMUHost(q, pciports.New(2), t.TempDir(), "")
	defer h.Close()
	ctx := context.Background()
	if err := h.AddShare(ctx, "rw", t.TempDir(), false); err != nil {
		t.Fatal(err)
	}
	if err := h.AddShare(ctx, "ro", t.TempDir(), true); err != nil {
		t.Fatal(err)
	}
	ourNS, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	const capSysAdmin, capMknod = 21, 27
	for tag, pid := range h.Daemons() {
		for _, p := range leaves(t, pid) {
			st := procStatus(t, p)
			ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p))
			caps, err := strconv.ParseUint(st["CapEff"], 16, 64)
			if err != nil {
				t.Fatalf("share %s: process %d: CapEff %q", tag, p, st["CapEff"])
			}
			t.Logf("share %s (%s): serving process %d: Seccomp %s, mount ns %s, CapEff %s", tag, DefaultVirtiofsd(), p, st["Seccomp"], ns, st["CapEff"])
			if st["Seccomp"] != "2" {
				t.Errorf("share %s: virtiofsd process %d has seccomp mode %s, want 2 (filter)", tag, p, st["Seccomp"])
			}
			if ns == "" || ns == ourNS {
				t.Errorf("share %s: virtiofsd process %d is in our mount namespace (%s)", tag, p, ns)
			}
			if caps&(1<<capMknod) != 0 || caps&(1<<capSysAdmin) != 0 {
				t.Errorf("share %s: virtiofsd process %d has CAP_MKNOD or CAP_SYS_ADMIN (CapEff %s)", tag, p, st["CapEff"])
			}
		}
	}
}

// fakeRust is a stand-in for the Rust virtiofsd: it answers --help as the
// Rust daemon does (with --readonly or without, as older versions), and
// otherwise records its arguments and exits.
func fakeRust(t *testing.T, readOnly bool) (bin, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	bin, argsFile = filepath.Join(dir, "virtiofsd"), filepath.Join(dir, "args")
	help := `Usage: virtiofsd [OPTIONS]\n      --shared-dir <SHARED_DIR>\n`
	if readOnly {
		help += `      --readonly\n`
	}
	script := "#!/bin/sh\nif [ \"$1\" = --help ]; then printf '" + help + "'; exit 0; fi\n" +
		"printf '%s\\n' \"$@\" > " + argsFile + "\necho 'fake virtiofsd: not serving' >&2\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, argsFile
}

// The Rust daemon gets its own options: the shared directory (the
// read-only view for a read-only share), the namespace sandbox, seccomp
// that kills, no CAP_MKNOD, and --readonly for a read-only share where it
// has it.
func TestRustVirtiofsdOptions(t *testing.T) {
	testutil.NeedRoot(t)
	q := hotplugtest.Start(t)
	ctx := context.Background()
	common := []string{"--cache=auto", "--log-level=warn", "--modcaps=-mknod", "--sandbox=namespace", "--seccomp=kill"}
	for _, tc := range []struct {
		name               string
		hasRO, shareRO     bool
		wantRO, wantOnView bool
	}{
		{"read-write", true, false, false, false},
		{"read-only", true, true, true, true},
		{"read-only, daemon without --readonly", false, true, false, true},
	} {
		bin, argsFile := fakeRust(t, tc.hasRO)
		state, src := t.TempDir(), t.TempDir()
		h := NewQEMUHost(q, pciports.New(2), state, bin)
		err := h.AddShare(ctx, "s", src, tc.shareRO)
		if err == nil || !strings.Contains(err.Error(), "fake virtiofsd: not serving") {
			t.Fatalf("%s: %v, want the fake daemon's exit", tc.name, err)
		}
		b, err := os.ReadFile(argsFile)
		if err != nil {
			t.Fatal(err)
		}
		served := src
		if tc.wantOnView {
			served = filepath.Join(state, "ro-s")
		}
		want := append([]string{"--fd=3", "--shared-dir=" + served}, common...)
		if tc.wantRO {
			want = append(want, "--readonly")
		}
		if got := strings.Fields(string(b)); !slices.Equal(got, want) {
			t.Errorf("%s: virtiofsd %q, want %q", tc.name, got, want)
		}
	}
}

// A daemon that is neither virtiofsd is refused before anything is set up.
func TestUnknownVirtiofsd(t *testing.T) {
	state := t.TempDir()
	h := NewQEMUHost(nil, pciports.New(1), state, "/bin/true")
	if err := h.AddShare(context.Background(), "s", t.TempDir(), true); err == nil || !strings.Contains(err.Error(), "not a virtiofsd") {
		t.Fatalf("/bin/true as virtiofsd: %v", err)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Fatalf("left %d entries in the state directory", len(ents))
	}
}
