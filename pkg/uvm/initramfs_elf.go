package uvm

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// libDirs are where a dynamic program's libraries are looked up, as the
// host's loader would on Debian (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// GuestRuntimes are the OCI runtimes looked for on the host's PATH to pack
// into the initramfs, in order of preference: crun (C) starts a container
// in a TCG guest in a fraction of runc's time (two Go program starts), and
// the guest's pure cgroup v2 hierarchy suits it (README).
var GuestRuntimes = []string{"crun", "runc"}

// FindGuestRuntime locates the OCI runtime packed into the initramfs:
// path when one is given, else the first of GuestRuntimes on PATH.
func FindGuestRuntime(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	for _, name := range GuestRuntimes {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no OCI runtime for the utility VM (looked for %v): install crun (bash scripts/deps.sh) or set LAYERVISOR_GUEST_RUNTIME", GuestRuntimes)
}

// elfClosure lists the files a program needs to run in a root of its own:
// its ELF interpreter and every shared library it needs, transitively, as
// (path in the guest, host file) pairs. A static program needs none.
func elfClosure(prog string) ([][2]string, error) {
	var out [][2]string
	seen := map[string]bool{}
	var visit func(file string) error
	visit = func(file string) error {
		f, err := elf.Open(file)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("%s: interpreter: %w", file, err)
			}
			interp := string(b[:len(b)-1]) // NUL-terminated
			if !seen[interp] {
				seen[interp] = true
				out = append(out, [2]string{interp, interp})
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, lib := range libs {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s: library %s not found in %v", file, lib, libDirs)
			}
			out = append(out, [2]string{found, found})
			if err := visit(found); err != nil {
				return err
			}
		}
		return nil
	}
	if err := visit(prog); err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("%s is not an ELF program: %w", prog, err)
		}
		return nil, err
	}
	return out, nil
}
