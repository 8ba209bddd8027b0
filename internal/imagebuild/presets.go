package imagebuild

import (
	"fmt"
	"os"
	"os/exec"
)

// BusyboxApplets are linked to /bin/busybox in BusyboxBase.
var BusyboxApplets = []string{"sh", "ls", "cat", "echo", "true", "false", "hostname", "mkdir", "rm", "mv", "cp", "stat", "find", "sha256sum", "wc", "sleep", "env", "id", "uname", "readlink", "head", "test", "mount", "grep"}

// BusyboxBase is a base layer from Debian's static busybox (package
// busybox-static): /bin/busybox with its applets as hard links, plus /etc,
// /tmp, /root, /proc, /dev, /sys.
func BusyboxBase() (Layer, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return Layer{}, fmt.Errorf("busybox not found (install busybox-static): %w", err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return Layer{}, err
	}
	l := Layer{Compression: Gzip, Entries: []Entry{
		Dir("bin", 0o755), Dir("etc", 0o755), Dir("tmp", 0o1777), Dir("root", 0o700),
		Dir("proc", 0o555), Dir("dev", 0o755), Dir("sys", 0o555), Dir("usr", 0o755), Dir("usr/bin", 0o755),
		{Header: File("bin/busybox", "", 0o755).Header, Content: data},
		File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
		File("etc/group", "root:x:0:\n", 0o644),
	}}
	l.Entries[9].Header.Size = int64(len(data))
	for _, a := range BusyboxApplets {
		l.Entries = append(l.Entries, Hardlink("bin/"+a, "bin/busybox"))
	}
	l.Entries = append(l.Entries, Symlink("usr/bin/env", "/bin/env"))
	return l, nil
}

// Demo is the image the demo and the end-to-end tests use: busybox, then
// layers that add, change, delete (whiteout) and replace (opaque) files,
// with a hard link, a symlink and mixed compression. DemoExpected lists
// what its merged view must hold.
func Demo(name string) (Image, error) {
	base, err := BusyboxBase()
	if err != nil {
		return Image{}, err
	}
	return Image{Name: name, Cmd: []string{"/bin/sh"}, Layers: []Layer{
		base,
		{Compression: Zstd, Entries: []Entry{
			File("etc/demo-release", "layervisor demo 1\n", 0o644),
			File("etc/motd", "to be deleted\n", 0o644),
			Dir("app", 0o755),
			File("app/config", "old config\n", 0o644),
			File("app/old-only", "only in the old app dir\n", 0o644),
			File("data.txt", "shared data\n", 0o644),
			Hardlink("data-link.txt", "data.txt"),
			Symlink("release", "etc/demo-release"),
		}},
		{Compression: None, Entries: []Entry{
			File("etc/demo-release", "layervisor demo 2\n", 0o644),
			Whiteout("etc/motd"),
			Dir("app", 0o755),
			Opaque("app"),
			File("app/config", "new config\n", 0o644),
			RandomFile("app/blob.bin", 1<<20, 42),
		}},
	}}, nil
}

// DemoExpected is the merged view of Demo: path → content ("" for a path
// that must not exist). "->" prefixes a symlink target.
var DemoExpected = map[string]string{
	"etc/demo-release": "layervisor demo 2\n",
	"etc/motd":         "",
	"app/config":       "new config\n",
	"app/old-only":     "",
	"data.txt":         "shared data\n",
	"data-link.txt":    "shared data\n",
	"release":          "->etc/demo-release",
}

// Bench is a deterministic image of n layers totalling about totalMB MiB:
// per layer many small files and one large random file.
func Bench(name string, n int, totalMB int64, comp Compression) (Image, error) {
	base, err := BusyboxBase()
	if err != nil {
		return Image{}, err
	}
	base.Compression = comp
	im := Image{Name: name, Layers: []Layer{base}}
	per := totalMB << 20 / int64(n)
	for i := 1; i < n; i++ {
		l := Layer{Compression: comp, Entries: []Entry{Dir(fmt.Sprintf("layer%d", i), 0o755)}}
		small := per / 4
		for j := int64(0); j*4096 < small; j++ {
			l.Entries = append(l.Entries, RandomFile(fmt.Sprintf("layer%d/f%05d", i, j), 4096, uint64(i*100000)+uint64(j)))
		}
		l.Entries = append(l.Entries, RandomFile(fmt.Sprintf("layer%d/big.bin", i), per-small, uint64(i)))
		im.Layers = append(im.Layers, l)
	}
	return im, nil
}
