package cristack

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

// PauseImage is the sandbox image the stack's containerd pins (containerd
// 2.4.2's default name), served by the loopback registry.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// The upstream hosts whose names critest pulls; the stack's hosts.toml
// sends each of them to the loopback registry (and nowhere else).
var mirroredHosts = []string{"registry.k8s.io", "k8s.gcr.io", "gcr.io", "docker.io"}

// critestRepo is where cri-tools' own test images live (path under gcr.io).
const critestRepo = "k8s-staging-cri-tools/"

// busyboxPasswd and busyboxGroup are the accounts of the busybox image
// (busybox:1.37.0), which critest's user specs rely on (www-data, nobody).
const busyboxPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`

const busyboxGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
`

// Stand-ins for the busybox applets critest runs that Debian's busybox
// leaves out. Their output has no digits but the data's
// (critest looks for a segment ID as a substring).
var standIns = map[string]string{
	"ipcs": `#!/bin/sh
# cristack stand-in for busybox ipcs (Debian's busybox has none).
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
while read -r key shmid perms size cpid lpid nattch uid rest; do
  [ "$key" = key ] && continue
  echo "$key $shmid $uid $perms $size $nattch"
done < /proc/sysvipc/shm
`,
	"pgrep": `#!/bin/sh
# cristack stand-in for busybox pgrep (Debian's busybox has none):
# pgrep PATTERN prints the PIDs whose name matches PATTERN.
[ $# -ge 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for d in /proc/[0-9]*; do
  read -r comm < "$d/comm" 2>/dev/null || continue
  if echo "$comm" | grep -q -- "$1"; then echo "${d#/proc/}"; found=0; fi
done
exit $found
`,
}

// imageSet is what the loopback registry serves: repository path →
// tag → image.
type imageSet map[string]map[string]imagebuild.Image

// BusyboxPath is Debian's dynamically linked busybox as scripts/deps.sh
// extracts it (LAYERVISOR_BUSYBOX_DIR overrides the directory). The images
// use it rather than busybox-static, which runs applets without exec: a
// shell's `ls` would never reach a masked /bin/ls.
func BusyboxPath() string {
	d := os.Getenv("LAYERVISOR_BUSYBOX_DIR")
	if d == "" {
		d = "/var/cache/layervisor/busybox-deb"
	}
	return filepath.Join(d, "busybox")
}

// libDirs are where the host's shared libraries are (Debian multiarch).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}

// sharedLibs returns the entries that make the dynamic executable bin run
// in an image: its interpreter at its own path and every library it needs
// (transitively) in /lib/x86_64-linux-gnu, copied from the host.
func sharedLibs(bin string) ([]imagebuild.Entry, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				f.Close()
				return nil, err
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	f.Close()
	if interp == "" {
		return nil, nil // static
	}
	fileEntry := func(name, src string) (imagebuild.Entry, error) {
		data, err := os.ReadFile(src)
		if err != nil {
			return imagebuild.Entry{}, err
		}
		e := imagebuild.File(name, "", 0o755)
		e.Content, e.Header.Size = data, int64(len(data))
		return e, nil
	}
	var entries []imagebuild.Entry
	dirs := map[string]bool{}
	addDirs := func(p string) {
		var parts []string
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			parts = append([]string{strings.TrimPrefix(d, "/")}, parts...)
		}
		for _, d := range parts {
			if !dirs[d] {
				dirs[d] = true
				entries = append(entries, imagebuild.Dir(d, 0o755))
			}
		}
	}
	addDirs(interp)
	e, err := fileEntry(strings.TrimPrefix(interp, "/"), interp)
	if err != nil {
		return nil, fmt.Errorf("interpreter of %s: %w", bin, err)
	}
	entries = append(entries, e)
	addDirs("/lib/x86_64-linux-gnu/x")
	seen := map[string]bool{filepath.Base(interp): true}
	queue := []string{bin}
	for len(queue) > 0 {
		f, err := elf.Open(queue[0])
		if err != nil {
			return nil, err
		}
		queue = queue[1:]
		libs, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if seen[l] {
				continue
			}
			seen[l] = true
			src := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, l)); err == nil {
					src = filepath.Join(d, l)
					break
				}
			}
			if src == "" {
				return nil, fmt.Errorf("%s needs %s, not found in %v", bin, l, libDirs)
			}
			e, err := fileEntry("lib/x86_64-linux-gnu/"+l, src)
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
			queue = append(queue, src)
		}
	}
	return entries, nil
}

// busyboxLayer is a busybox root like the busybox image's: busybox (with
// the shared libraries it needs) and every applet it has hard-linked in
// /bin, the stand-ins, and the given accounts.
func busyboxLayer(bb, passwd, group string) (imagebuild.Layer, error) {
	data, err := os.ReadFile(bb)
	if err != nil {
		return imagebuild.Layer{}, fmt.Errorf("busybox (bash scripts/deps.sh): %w", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return imagebuild.Layer{}, fmt.Errorf("%s --list: %w", bb, err)
	}
	libs, err := sharedLibs(bb)
	if err != nil {
		return imagebuild.Layer{}, err
	}
	bin := imagebuild.File("bin/busybox", "", 0o755)
	bin.Content, bin.Header.Size = data, int64(len(data))
	l := imagebuild.Layer{Compression: imagebuild.Gzip}
	for _, d := range []string{"bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin", "var", "var/run", "var/www", "var/spool", "var/spool/mail"} {
		mode := int64(0o755)
		switch d {
		case "root":
			mode = 0o700
		case "proc", "sys":
			mode = 0o555
		}
		l.Entries = append(l.Entries, imagebuild.Dir(d, mode))
	}
	l.Entries = append(l.Entries, imagebuild.Dir("tmp", 0o1777), bin,
		imagebuild.File("etc/passwd", passwd, 0o644),
		imagebuild.File("etc/group", group, 0o644))
	l.Entries = append(l.Entries, libs...)
	applets := strings.Fields(string(out))
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		l.Entries = append(l.Entries, imagebuild.Hardlink("bin/"+a, "bin/busybox"))
	}
	for _, name := range []string{"ipcs", "pgrep"} {
		if !slices.Contains(applets, name) {
			l.Entries = append(l.Entries, imagebuild.File("bin/"+name, standIns[name], 0o755))
		}
	}
	l.Entries = append(l.Entries, imagebuild.Symlink("usr/bin/env", "/bin/env"))
	return l, nil
}

var defaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// critestImages builds the images critest v1.37.0 pulls (pkg/validate,
// pkg/framework), keyed by repository path under the mirrored hosts.
// helper is the imagehelper binary. The digest-pinned
// test-image-digest@sha256:9700f9a2… cannot be reproduced: its
// repository is served, but the pull by that digest fails ("public
// image with digest should be pulled and removed").
func critestImages(helper string) (imageSet, error) {
	bb := BusyboxPath()
	base, err := busyboxLayer(bb, busyboxPasswd, busyboxGroup)
	if err != nil {
		return nil, err
	}
	helperData, err := os.ReadFile(helper)
	if err != nil {
		return nil, err
	}
	file := func(name string, mode int64, data []byte) imagebuild.Entry {
		e := imagebuild.File(name, "", mode)
		e.Content, e.Header.Size = data, int64(len(data))
		return e
	}
	busybox := func(user string, extra ...imagebuild.Entry) imagebuild.Image {
		im := imagebuild.Image{Layers: []imagebuild.Layer{base}, Config: &ocispec.ImageConfig{User: user, Env: defaultEnv, Cmd: []string{"sh"}}}
		if len(extra) > 0 {
			im.Layers = append(im.Layers, imagebuild.Layer{Compression: imagebuild.Gzip, Entries: extra})
		}
		return im
	}
	// A web server on busybox: the helper as name, run by cmd.
	web := func(path string, cmd []string, env ...string) imagebuild.Image {
		im := busybox("", file(path, 0o755, helperData),
			imagebuild.Dir("usr/share", 0o755), imagebuild.Dir("usr/share/nginx", 0o755), imagebuild.Dir("usr/share/nginx/html", 0o755),
			imagebuild.File("usr/share/nginx/html/index.html", "<html><body>It works!</body></html>\n", 0o644))
		im.Config.Cmd = cmd
		im.Config.Env = append(append([]string{}, defaultEnv...), env...)
		im.Config.ExposedPorts = map[string]struct{}{"80/tcp": {}}
		im.Config.StopSignal = "SIGTERM"
		return im
	}
	marker := func(name string) imagebuild.Image {
		return busybox("", imagebuild.File(name, "", 0o644))
	}
	set := imageSet{
		"e2e-test-images/busybox":           {"1.29-2": busybox("")},
		"e2e-test-images/nginx":             {"1.14-2": web("usr/sbin/nginx", []string{"nginx", "-g", "daemon off;"})},
		"e2e-test-images/httpd":             {"2.4.39-4": web("usr/local/bin/httpd-foreground", []string{"httpd-foreground"})},
		critestRepo + "hostnet-nginx-amd64": {"latest": web("usr/sbin/nginx", []string{"nginx", "-g", "daemon off;"}, "NGINX_PORT=12003")},

		critestRepo + "test-image-1":      {"latest": marker("test-image-1")},
		critestRepo + "test-image-2":      {"latest": marker("test-image-2")},
		critestRepo + "test-image-3":      {"latest": marker("test-image-3")},
		critestRepo + "test-image-latest": {"latest": marker("test-image-latest")},
		critestRepo + "test-image-digest": {"latest": marker("test-image-digest")},
		critestRepo + "test-image-tags":   {"1": marker("same-image"), "2": marker("same-image"), "3": marker("same-image")},
		critestRepo + "test-image-tag":    {"test": marker("test"), "all": marker("all")},

		critestRepo + "test-image-user-uid":            {"latest": busybox("1002")},
		critestRepo + "test-image-user-username":       {"latest": busybox("www-data")},
		critestRepo + "test-image-user-uid-group":      {"latest": busybox("1003:1004")},
		critestRepo + "test-image-user-username-group": {"latest": busybox("www-data:1004")},
	}
	// e2e-test-images/nonewprivs: a set-user-ID-root program printing its
	// effective UID (the helper as nnp).
	nnp := busybox("", imagebuild.Dir("usr/local/bin", 0o755), file("usr/local/bin/nnp", 0o4755, helperData))
	nnp.Config.Cmd, nnp.Config.Entrypoint = nil, []string{"/usr/local/bin/nnp"}
	set["e2e-test-images/nonewprivs"] = map[string]imagebuild.Image{"1.3": nnp}

	// test-image-predefined-group: default-user (1000) is also in
	// group-defined-in-image (50000), as `adduser`/`addgroup` leave it.
	pg, err := busyboxLayer(bb, busyboxPasswd+"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n",
		busyboxGroup+"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
	if err != nil {
		return nil, err
	}
	pg.Entries = append(pg.Entries, imagebuild.Dir("home/default-user", 0o755))
	pg.Entries[len(pg.Entries)-1].Header.Uid, pg.Entries[len(pg.Entries)-1].Header.Gid = 1000, 1000
	set[critestRepo+"test-image-predefined-group"] = map[string]imagebuild.Image{"latest": {
		Layers: []imagebuild.Layer{pg}, Config: &ocispec.ImageConfig{User: "1000", Env: defaultEnv, Cmd: []string{"sh"}}}}

	// The pause images: /pause alone, as upstream's (user 65535), one
	// image per version as upstream (critest counts the tags of pause:3.9,
	// which must not be the pinned sandbox image's).
	set["pause"] = map[string]imagebuild.Image{}
	for _, v := range []string{"3.9", "3.10", "3.10.1", "3.10.2"} {
		set["pause"][v] = imagebuild.Image{
			Layers: []imagebuild.Layer{{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{file("pause", 0o755, helperData)}}},
			Config: &ocispec.ImageConfig{User: "65535:65535", Env: defaultEnv, Entrypoint: []string{"/pause"},
				Labels: map[string]string{"io.layervisor.cristack.pause-version": v}},
		}
	}
	return set, nil
}

// buildHelper builds the imagehelper program (static) into dir.
func buildHelper(dir string) (string, error) {
	out := filepath.Join(dir, "imagehelper")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/layervisor/layervisor/internal/cristack/imagehelper")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build imagehelper: %v: %s", err, stderr.Bytes())
	}
	return out, nil
}
