package uvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/agent"
)

var (
	tplRootOnce sync.Once
	tplRoot     string
)

// tplConfig is a config whose root is shared by the template tests, so
// they share one template (the first UVM there saves it).
func tplConfig(t *testing.T, id string) Config {
	t.Helper()
	cfg := testConfig(t, id)
	tplRootOnce.Do(func() {
		var err error
		if tplRoot, err = os.MkdirTemp("", "lv-tpl"); err != nil {
			t.Fatal(err)
		}
	})
	cfg.Root = tplRoot
	return cfg
}

func TestMain(m *testing.M) {
	code := testutil.Main(m)
	if tplRoot != "" {
		GC(context.Background(), tplRoot, HostOptions{})
		os.RemoveAll(tplRoot)
	}
	os.Exit(code)
}

// ensureTemplate makes sure the shared root has a template, by starting
// (and stopping) a UVM there.
func ensureTemplate(t *testing.T) Manifest {
	t.Helper()
	u := start(t, tplConfig(t, "seed"))
	want := templateFor(t, u)
	if _, err := checkTemplate(filepath.Join(TemplatesDir(tplRoot), want.Key), want); err != nil {
		t.Fatalf("no template after the first UVM: %v", err)
	}
	u.Stop(context.Background())
	u.Remove(context.Background())
	return want
}

func templateFor(t *testing.T, u *UVM) Manifest {
	t.Helper()
	want, err := u.expectedManifest("/usr/bin/qemu-system-x86_64", u.State().Accel)
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// exec runs /init --version in the guest: the agent refuses to be a
// second agent, a real guest process with output and an exit code.
func execVersion(t *testing.T, u *UVM) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code, err := u.Agent().Exec(context.Background(), agent.ExecRequest{Args: []string{"/init", "--version"}, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("%s: exec: %v", u.ID(), err)
	}
	return code, out.String()
}

func TestTemplateClonesMatchCold(t *testing.T) {
	ensureTemplate(t)
	cold := tplConfig(t, "cold")
	cold.Cold = true
	uc := start(t, cold)
	if uc.State().Template != "" {
		t.Fatalf("--cold UVM restored from template %s", uc.State().Template)
	}
	// Two clones started at once, side by side.
	var clones [2]*UVM
	var wg sync.WaitGroup
	for i := range clones {
		cfg := tplConfig(t, "clone"+string(rune('a'+i)))
		u, err := Create(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Stop(context.Background()); u.Remove(context.Background()) })
		clones[i] = u
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := u.Start(context.Background()); err != nil {
				t.Error(err)
			}
			t.Logf("%s started in %v", u.ID(), time.Since(t0))
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	wantCode, wantOut := execVersion(t, uc)
	if wantCode != 2 {
		t.Fatalf("cold: exit code %d (%q)", wantCode, wantOut)
	}
	for _, u := range clones {
		if u.State().Template == "" {
			t.Errorf("%s booted cold with a template there", u.ID())
		}
		if code, out := execVersion(t, u); code != wantCode || out != wantOut {
			t.Errorf("%s: exit %d %q; cold: exit %d %q", u.ID(), code, out, wantCode, wantOut)
		}
		if id := u.Identity(); id.Hostname != u.ID() {
			t.Errorf("%s: guest hostname %q", u.ID(), id.Hostname)
		}
	}
	a, b := clones[0].Identity(), clones[1].Identity()
	if bytes.Equal(a.Random, b.Random) {
		t.Errorf("clones drew the same random bytes %x", a.Random)
	}
	// The kernel makes its boot id at the first read, which comes after
	// the restore and the reseed: each clone has its own.
	if a.BootID == "" || a.BootID == b.BootID {
		t.Errorf("boot ids %q and %q: want two", a.BootID, b.BootID)
	}
	// A clone's QEMU holds no kernel or initramfs (fw_cfg would keep both
	// in its memory), so a reset must end it, not leave it in firmware.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", clones[0].proc.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Split(string(cmdline), "\x00"); slices.Contains(args, "-kernel") || slices.Contains(args, "-initrd") || !slices.Contains(args, "-no-reboot") {
		t.Errorf("restored QEMU's command line: %q", args)
	}
	if err := clones[1].QMP().Execute(context.Background(), "system_reset", nil, nil); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !clones[1].Failed(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a reset clone still runs: its QEMU must exit (-no-reboot)")
		}
	}
}

// A stale template (other QEMU version) and a damaged one (state file not
// what QEMU can load, though its hash matches) both give a cold boot that
// saves a good template again.
func TestTemplateStaleAndCorrupt(t *testing.T) {
	want := ensureTemplate(t)
	dir := filepath.Join(TemplatesDir(tplRoot), want.Key)
	mpath := filepath.Join(dir, tplManifest)
	edit := func(f func(m *Manifest)) {
		var m Manifest
		if err := atomicfile.ReadJSON(mpath, &m); err != nil {
			t.Fatal(err)
		}
		f(&m)
		if err := atomicfile.WriteJSON(mpath, m, false); err != nil {
			t.Fatal(err)
		}
	}
	edit(func(m *Manifest) { m.QEMUVersion = "QEMU emulator version 1.0" })
	u := start(t, tplConfig(t, "stale"))
	if u.State().Template != "" {
		t.Fatal("restored from a stale template")
	}
	if _, err := checkTemplate(dir, want); err != nil {
		t.Fatalf("template not saved again after a stale one: %v", err)
	}

	state := filepath.Join(dir, tplState)
	if err := os.WriteFile(state, []byte("QEVM garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := hashFile(state)
	if err != nil {
		t.Fatal(err)
	}
	edit(func(m *Manifest) { m.StateHash = h })
	u = start(t, tplConfig(t, "corrupt"))
	if u.State().Template != "" {
		t.Fatal("restored from a corrupt template")
	}
	if code, _ := execVersion(t, u); code != 2 {
		t.Fatalf("cold fallback: exit code %d", code)
	}
	if _, err := checkTemplate(dir, want); err != nil {
		t.Fatalf("template not saved again after a failed restore: %v", err)
	}
	u = start(t, tplConfig(t, "after"))
	if u.State().Template != want.Key {
		t.Fatalf("restored from %q, want %s", u.State().Template, want.Key)
	}
}
