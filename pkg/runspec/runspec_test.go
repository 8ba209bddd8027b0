package runspec

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	if got := s.Process.Env; !reflect.DeepEqual(got, []string{"A=1", "B=2"}) {
		t.Errorf("env = %q", got)
	}
	if s.Process.Cwd != "/tmp" || len(s.Mounts) != 3 || s.Mounts[2].Destination != "/v" {
		t.Errorf("cwd %q mounts %+v", s.Process.Cwd, s.Mounts)
	}
	if !RuntimeProvided(s.Mounts[0]) || RuntimeProvided(s.Mounts[1]) || !ReadOnly(s.Mounts[1]) {
		t.Errorf("classification of %+v wrong", s.Mounts)
	}

	s, err = Build(Flags{SpecFile: spec, Args: []string{"true"}, Cwd: "/"})
	if err != nil || !reflect.DeepEqual(s.Process.Args, []string{"true"}) || s.Process.Cwd != "/" {
		t.Errorf("flags must override the spec: %+v, %v", s.Process, err)
	}
	s, err = Build(Flags{Args: []string{"true"}})
	if err != nil || !reflect.DeepEqual(s.Process.Env, DefaultEnv) || s.Process.Cwd != "/" {
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
