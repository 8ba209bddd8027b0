package inroot

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func writeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func spec(user string, args ...string) *specs.Spec {
	return &specs.Spec{Annotations: map[string]string{UserAnnotation: user},
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}}}
}

func TestResolveUserAndGroups(t *testing.T) {
	root := Dir(writeRoot(t, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nstaff:x:50:app\naudio:x:29:app,root\n",
		"bin/sh":     "#!",
	}))
	for _, tc := range []struct {
		user       string
		uid, gid   uint32
		additional []uint32
		home       string
	}{
		{"app", 1000, 1000, []uint32{1000, 50, 29}, "/home/app"}, // containerd lists the primary group too
		{"1000", 1000, 1000, []uint32{1000, 50, 29}, "/home/app"},
		{"app:staff", 1000, 50, nil, "/home/app"}, // an explicit group replaces the supplementary ones, as in runc
		{"0", 0, 0, []uint32{0, 29}, "/root"},
		{"4242:4242", 4242, 4242, nil, "/"}, // numeric ids need no entry
	} {
		s := spec(tc.user, "sh")
		if err := Resolve(s, root); err != nil {
			t.Fatalf("%s: %v", tc.user, err)
		}
		u := s.Process.User
		if u.UID != tc.uid || u.GID != tc.gid || !reflect.DeepEqual(u.AdditionalGids, tc.additional) {
			t.Errorf("%s: got %d:%d %v, want %d:%d %v", tc.user, u.UID, u.GID, u.AdditionalGids, tc.uid, tc.gid, tc.additional)
		}
		if !reflect.DeepEqual(s.Process.Env, []string{"PATH=/bin", "HOME=" + tc.home}) {
			t.Errorf("%s: env %q", tc.user, s.Process.Env)
		}
		if _, ok := s.Annotations[UserAnnotation]; ok {
			t.Errorf("%s: the annotation stayed", tc.user)
		}
	}
	if err := Resolve(spec("nobody", "sh"), root); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nobody"`) {
		t.Errorf("unknown user: %v", err)
	}
	if err := Resolve(spec("app:nogroup", "sh"), root); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown group: %v", err)
	}
}

// An image whose /etc/passwd is a link to the host's must not make the
// host read its own file; a command linked out of the root is not found.
func TestResolveStaysInRoot(t *testing.T) {
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "passwd"), []byte("secret:x:77:77::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(host, "tool"), []byte("#!"), 0o755)
	root := Dir(writeRoot(t, map[string]string{
		"etc/passwd": "->" + filepath.Join(host, "passwd"),
		"bin/tool":   "->" + filepath.Join(host, "tool"),
		"bin/up":     "->../../../../../../" + filepath.Join(host, "tool"),
	}))
	if err := Resolve(spec("secret"), root); !errors.Is(err, ErrNotFound) {
		t.Errorf("user through a link out of the root: %v", err)
	}
	for _, cmd := range []string{"tool", "up", "/bin/tool"} {
		if err := Resolve(&specs.Spec{Process: &specs.Process{Args: []string{cmd}, Cwd: "/", Env: []string{"PATH=/bin"}}}, root); !errors.Is(err, ErrCommandNotFound) {
			t.Errorf("command %s through a link out of the root: %v", cmd, err)
		}
	}
}

func TestResolveCommand(t *testing.T) {
	root := Dir(writeRoot(t, map[string]string{"bin/sh": "#!", "app/run": "#!", "etc/passwd": ""}))
	os.Chmod(filepath.Join(string(root), "app/run"), 0o755)
	ok := [][]string{{"sh"}, {"/bin/sh"}, {"./run"}}
	for i, args := range ok {
		s := &specs.Spec{Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}}}
		if i == 2 {
			s.Process.Cwd = "/app"
		}
		if err := Resolve(s, root); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	for _, args := range [][]string{{"nope"}, {"/etc/passwd"}, {"/bin"}} {
		s := &specs.Spec{Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}}}
		if err := Resolve(s, root); !errors.Is(err, ErrCommandNotFound) || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want not found naming it", args, err)
		}
	}
}

func TestResolveBoundsAccountFiles(t *testing.T) {
	root := writeRoot(t, map[string]string{"bin/sh": "#!"})
	big := strings.Repeat("u:x:1:1::/:/bin/sh\n", (maxAccountFile/19)+10)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(big), 0o644)
	if err := Resolve(spec("u", "sh"), Dir(root)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a huge /etc/passwd: %v", err)
	}
}
