package runspec

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/inroot"
)

func TestParseVolume(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want specs.Mount
		err  string
	}{
		{in: "/h:/c", want: specs.Mount{Type: "bind", Source: "/h", Destination: "/c", Options: []string{"rbind"}}},
		{in: "/h:/c:ro", want: specs.Mount{Type: "bind", Source: "/h", Destination: "/c", Options: []string{"rbind", "ro"}}},
		{in: "/h:/c:rw", want: specs.Mount{Type: "bind", Source: "/h", Destination: "/c", Options: []string{"rbind"}}},
		{in: "/h", err: "want HOST:CONTAINER"},
		{in: "/h:/c:ro:x", err: "want HOST:CONTAINER"},
		{in: "/h:/c:rx", err: `unknown option "rx"`},
		{in: "h:/c", err: "not absolute"},
		{in: "/h:c", err: "not an absolute path"},
		{in: "/h:/a/../b", err: `contains ".."`},
		{in: "/h:/", err: "replace the root"},
	} {
		got, err := ParseVolume(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("ParseVolume(%q) = %v, want error naming the input and %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseVolume(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseMount(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want specs.Mount
		err  string
	}{
		{in: "type=bind,source=/h,target=/c,readonly",
			want: specs.Mount{Type: "bind", Source: "/h", Destination: "/c", Options: []string{"rbind", "ro"}}},
		{in: "src=/h,dst=/c,ro=false",
			want: specs.Mount{Type: "bind", Source: "/h", Destination: "/c", Options: []string{"rbind"}}},
		{in: "type=sandbox,source=cache/x,target=/cache",
			want: specs.Mount{Type: "bind", Source: "sandbox://cache/x", Destination: "/cache", Options: []string{"rbind"}}},
		{in: "type=virtual-disk,source=/d.img,target=/data,format=vhdx,readonly=true",
			want: specs.Mount{Type: "virtual-disk", Source: "/d.img", Destination: "/data", Options: []string{"format=vhdx", "ro"}}},
		{in: "type=physical-disk,source=/dev/loop7,target=/disk",
			want: specs.Mount{Type: "physical-disk", Source: "/dev/loop7", Destination: "/disk"}},
		{in: "type=bind,target=/c", err: "needs source= and target="},
		{in: "type=tmpfs,source=x,target=/c", err: `unknown type "tmpfs"`},
		{in: "type=bind,source=/h,target=/c,bogus=1", err: `unknown key "bogus"`},
		{in: "type=bind,source=/h,target=/c,readonly=maybe", err: "want true or false"},
		{in: "type=sandbox,source=../x,target=/c", err: "escapes the sandbox root"},
		{in: "type=sandbox,source=/x,target=/c", err: "must be a relative path"},
		{in: "type=bind,source=/h,target=/c,format=vhdx", err: "virtual-disk only"},
		{in: "type=virtual-disk,source=/d,target=/c,format=qcow2", err: "want raw, vhd or vhdx"},
		{in: "type=virtual-disk,source=d,target=/c", err: "not an absolute host path"},
		{in: "type=bind,source=/h,target=/x/../../etc", err: `contains ".."`},
	} {
		got, err := ParseMount(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("ParseMount(%q) = %v, want error naming the input and %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestDiskFormatNeverProbesContent(t *testing.T) {
	dir := t.TempDir()
	// A raw disk whose content looks like a VHDX stays raw: only the name
	// or an explicit option decides.
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, []byte("vhdxfile"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m    specs.Mount
		want string
	}{
		{specs.Mount{Source: p}, "raw"},
		{specs.Mount{Source: "/x/d.VHDX"}, "vhdx"},
		{specs.Mount{Source: "/x/d.vhd"}, "vhd"},
		{specs.Mount{Source: "/x/d.vhdx", Options: []string{"format=raw"}}, "raw"},
	} {
		if got := DiskFormat(tc.m); got != tc.want {
			t.Errorf("DiskFormat(%+v) = %q, want %q", tc.m, got, tc.want)
		}
	}
}

func TestBuildMergesSpecAndFlags(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "config.json")
	if err := os.WriteFile(spec, []byte(`{"ociVersion":"1.0.2","process":{"args":["sh","-c","echo spec"],"env":["A=1"],"cwd":"/tmp"},
	  "mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/data","type":"bind","source":"/srv","options":["rbind","ro"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Build(Flags{SpecFile: spec, Env: []string{"B=2"}, Volumes: []string{"/h:/v:ro"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Process.Args; !reflect.DeepEqual(got, []string{"sh", "-c", "echo spec"}) {
		t.Errorf("args = %q", got)
	}
	if got := s.Process.Env; !reflect.DeepEqual(got, []string{DefaultPath, "A=1", "B=2"}) {
		t.Errorf("env = %q", got)
	}
	n := len(s.Mounts)
	if s.Process.Cwd != "/tmp" || n < 3 || s.Mounts[n-2].Destination != "/data" || s.Mounts[n-1].Destination != "/v" {
		t.Fatalf("cwd %q mounts %+v", s.Process.Cwd, s.Mounts)
	}
	procs := 0
	for _, m := range s.Mounts {
		if m.Destination == "/proc" {
			procs++
		}
	}
	if procs != 1 || !RuntimeProvided(s.Mounts[0]) || RuntimeProvided(s.Mounts[n-2]) || !ReadOnly(s.Mounts[n-2]) {
		t.Errorf("classification of %+v wrong", s.Mounts)
	}

	s, err = Build(Flags{SpecFile: spec, Args: []string{"true"}, Cwd: "/"})
	if err != nil || !reflect.DeepEqual(s.Process.Args, []string{"true"}) || s.Process.Cwd != "/" {
		t.Errorf("flags must override the spec: %+v, %v", s.Process, err)
	}
	s, err = Build(Flags{Args: []string{"true"}})
	if err != nil || !reflect.DeepEqual(s.Process.Env, []string{DefaultPath}) || s.Process.Cwd != "/" {
		t.Errorf("defaults: %+v, %v", s.Process, err)
	}
	for _, tc := range []struct {
		f   Flags
		err string
	}{
		{Flags{}, "no command"},
		{Flags{Args: []string{"x"}, Env: []string{"NOEQUALS"}}, "want KEY=VALUE"},
		{Flags{Args: []string{"x"}, Cwd: "rel"}, "not an absolute path"},
		{Flags{SpecFile: filepath.Join(dir, "missing.json"), Args: []string{"x"}}, "missing.json"},
		{Flags{Args: []string{"x"}, Confinement: Confinement{Memory: "4m"}}, `--memory "4m": below the minimum`},
		{Flags{Args: []string{"x"}, Confinement: Confinement{Memory: "lots"}}, `--memory "lots"`},
		{Flags{Args: []string{"x"}, Confinement: Confinement{Network: "bridge"}}, `--network "bridge"`},
		{Flags{Args: []string{"x"}, Confinement: Confinement{CapAdd: []string{"FLY"}}}, `--cap-add "FLY": unknown capability`},
		{Flags{Args: []string{"x"}, Confinement: Confinement{SecurityOpts: []string{"seccomp=" + filepath.Join(dir, "nope.json")}}}, "nope.json"},
		{Flags{Args: []string{"x"}, Confinement: Confinement{SecurityOpts: []string{"apparmor=x"}}}, `--security-opt "apparmor=x"`},
		{Flags{Args: []string{"x"}, Confinement: Confinement{PidsLimit: -1}}, "--pids-limit -1"},
	} {
		if _, err := Build(tc.f); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Build(%+v) = %v, want %q", tc.f, err, tc.err)
		}
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"mounts":[{"destination":"rel","type":"bind","source":"/x"}]}`), 0o600)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "mounts[0]") || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("Load(bad) = %v, want error naming the file and the mount", err)
	}
	os.WriteFile(bad, []byte(`{"process":`), 0o600)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("Load(truncated) = %v", err)
	}
}

// The image's config comes first, a command after "--" replaces its Cmd
// (not its Entrypoint), -e replaces its variables, -u its user.
func TestBuildFromImageConfig(t *testing.T) {
	img := &ocispec.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"default"}, Env: []string{"PATH=/img/bin", "A=image"},
		WorkingDir: "/work", User: "app"}
	s, err := Build(Flags{ID: "c1", Image: img})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Process.Args, []string{"/entry", "default"}) || s.Process.Cwd != "/work" ||
		!reflect.DeepEqual(s.Process.Env, []string{"PATH=/img/bin", "A=image"}) || s.Annotations[inroot.UserAnnotation] != "app" {
		t.Errorf("image config not applied: %+v %v", s.Process, s.Annotations)
	}
	if s.Hostname != "c1" || s.Linux.CgroupsPath != "/layervisor/c1" || s.Linux.Seccomp == nil || !s.Process.NoNewPrivileges {
		t.Errorf("defaults: hostname %q cgroup %q seccomp %v nnp %v", s.Hostname, s.Linux.CgroupsPath, s.Linux.Seccomp != nil, s.Process.NoNewPrivileges)
	}
	s, err = Build(Flags{ID: "c1", Image: img, Args: []string{"other"}, Env: []string{"A=flag"}, Cwd: "/", Confinement: Confinement{User: "1:2"}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Process.Args, []string{"/entry", "other"}) || s.Process.Cwd != "/" ||
		!reflect.DeepEqual(s.Process.Env, []string{"PATH=/img/bin", "A=flag"}) || s.Annotations[inroot.UserAnnotation] != "1:2" {
		t.Errorf("flags did not override: %+v %v", s.Process, s.Annotations)
	}
	if _, err := Build(Flags{Image: &ocispec.ImageConfig{}}); err == nil || !strings.Contains(err.Error(), "no Entrypoint or Cmd") {
		t.Errorf("an image without a command: %v", err)
	}
}

// Each flag changes the spec where the runtime reads it.
func TestBuildConfinementFlags(t *testing.T) {
	s, err := Build(Flags{Args: []string{"x"}, Confinement: Confinement{TTY: true, Network: NetworkHost, Hostname: "h",
		Memory: "64m", CPUs: 0.5, PidsLimit: 20, ReadOnly: true, CapDrop: []string{"ALL"}, CapAdd: []string{"net_admin"},
		SecurityOpts: []string{"seccomp=unconfined", "no-new-privileges=false"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			t.Error("--network host kept the network namespace")
		}
	}
	r := s.Linux.Resources
	if !s.Process.Terminal || s.Hostname != "h" || *r.Memory.Limit != 64<<20 || *r.CPU.Quota != 50000 || *r.CPU.Period != 100000 ||
		r.Pids.Limit == nil || *r.Pids.Limit != 20 || !s.Root.Readonly || s.Linux.Seccomp != nil || s.Process.NoNewPrivileges {
		t.Errorf("flags not applied: %+v %+v", s.Process, r)
	}
	if c := s.Process.Capabilities; !reflect.DeepEqual(c.Effective, []string{"CAP_NET_ADMIN"}) || !reflect.DeepEqual(c.Bounding, []string{"CAP_NET_ADMIN"}) {
		t.Errorf("caps = %+v", c)
	}
	s, err = Build(Flags{Args: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	hasNet := false
	for _, ns := range s.Linux.Namespaces {
		hasNet = hasNet || ns.Type == specs.NetworkNamespace
	}
	if !hasNet || len(s.Process.Capabilities.Effective) != 14 {
		t.Errorf("defaults: network namespace %v, %d capabilities", hasNet, len(s.Process.Capabilities.Effective))
	}
}

// "rro" (CRI's recursive read-only) is read-only: a share made for it must
// be read-only on the host.
func TestReadOnlyOptions(t *testing.T) {
	for _, c := range []struct {
		opts []string
		ro   bool
	}{
		{nil, false}, {[]string{"rbind"}, false}, {[]string{"rbind", "ro"}, true}, {[]string{"rbind", "rro"}, true},
		{[]string{"ro", "rw"}, false}, {[]string{"RO"}, true},
	} {
		if got := ReadOnly(specs.Mount{Options: c.opts}); got != c.ro {
			t.Errorf("%v: read-only %v, want %v", c.opts, got, c.ro)
		}
	}
}
