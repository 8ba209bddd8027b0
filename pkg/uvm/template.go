package uvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/internal/sparse"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/qmp"
)

// A template is a UVM saved right after its agent first answered: the
// device state (QEMU's migration stream, without guest RAM) and the guest
// RAM file. UVMs of the same shape start from it instead of booting: QEMU
// with the same command line loads the state (-incoming) over a clone of
// the RAM file, and the agent gives the clone its own RNG state, clock and
// hostname.
//
// Guest RAM stays out of the stream: it is a shared memory-backend-file
// and both sides set the migration capability x-ignore-shared. Each UVM
// maps its own clone of the file (reflink, else a sparse copy), shared, so
// vhost-user (virtiofs) sees the guest memory as with a memfd.
//
// There is no separate build step: the first UVM of a shape boots cold and
// saves itself as the template (stop, migrate, copy RAM, cont) before its
// first use, which costs it about a second.

// templateFormat changes when the template layout or the QEMU command line
// changes in a way the other key parts do not capture.
const templateFormat = 2 // 2: QEMU under -sandbox with spawn=deny, migrations over sockets

// Template files inside <root>/templates/<key>/.
const (
	tplManifest = "manifest.json"
	tplState    = "state"
	tplRAM      = "ram"
)

// Shape is what fixes a UVM's machine: devices, memory, CPUs, accelerator.
type Shape struct {
	MemoryMB        int    `json:"memoryMB"`
	CPUs            int    `json:"cpus"`
	SCSIControllers int    `json:"scsiControllers"`
	VPMemSlots      int    `json:"vpmemSlots"`
	PmemBudgetMB    int    `json:"pmemBudgetMB"`
	RootPorts       int    `json:"rootPorts"`
	Accel           string `json:"accel"`
}

// Manifest describes a template; it is checked before every use.
type Manifest struct {
	Format      int       `json:"format"`
	Key         string    `json:"key"`
	QEMU        string    `json:"qemu"` // path
	QEMUVersion string    `json:"qemuVersion"`
	Kernel      string    `json:"kernel"` // path
	KernelHash  string    `json:"kernelSHA256"`
	Initrd      string    `json:"initrd"` // path (the agent is inside)
	InitrdHash  string    `json:"initrdSHA256"`
	Shape       Shape     `json:"shape"`
	StateHash   string    `json:"stateSHA256"`
	RAMSize     int64     `json:"ramSize"`
	Created     time.Time `json:"created"`
	// Source is the UVM that was saved.
	Source string `json:"source"`
}

// TemplatesDir is where a root's templates live.
func TemplatesDir(root string) string { return filepath.Join(root, "templates") }

// fileHashes caches file hashes by path and fileIdentity within a process
// (for the template's state file; inputCache keeps the kernel's and
// initramfs's across processes).
var fileHashes sync.Map // key string -> hash string

func hashFile(p string) (string, error) {
	id, err := fileIdentity(p)
	if err != nil {
		return "", err
	}
	ck := p + "\x00" + id
	if h, ok := fileHashes.Load(ck); ok {
		return h.(string), nil
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	fileHashes.Store(ck, sum)
	return sum, nil
}

// runQEMUVersion is the first line of `qemu --version` (inputCache keeps it).
func runQEMUVersion(qemu string) (string, error) {
	out, err := exec.Command(qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", qemu, err)
	}
	v, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(v), nil
}

// expectedManifest is the manifest a template for this UVM must have,
// without the parts only a saved template knows.
func (u *UVM) expectedManifest(qemu, acc string) (Manifest, error) {
	c := u.cfg
	m := Manifest{Format: templateFormat, QEMU: qemu, Kernel: filepath.Join(c.BootDir, "vmlinuz"), Initrd: c.Initrd,
		Shape:   Shape{MemoryMB: c.MemoryMB, CPUs: c.CPUs, SCSIControllers: c.SCSIControllers, VPMemSlots: c.VPMemSlots, PmemBudgetMB: c.PmemBudgetMB, RootPorts: c.RootPorts, Accel: acc},
		RAMSize: int64(c.MemoryMB) << 20}
	inputs := inputCacheFor(c.Root)
	var err error
	if m.QEMUVersion, err = inputs.qemuVersion(qemu); err != nil {
		return m, err
	}
	if m.KernelHash, err = inputs.hash(m.Kernel); err != nil {
		return m, err
	}
	if m.InitrdHash, err = inputs.hash(m.Initrd); err != nil {
		return m, err
	}
	b, _ := json.Marshal([]any{m.Format, m.QEMUVersion, m.KernelHash, m.InitrdHash, m.Shape})
	sum := sha256.Sum256(b)
	m.Key = hex.EncodeToString(sum[:16])
	return m, nil
}

// ErrTemplateStale is returned for a template that does not match its
// inputs any more, or is damaged.
var ErrTemplateStale = errors.New("stale or damaged UVM template")

// checkTemplate verifies the template in dir against want: manifest,
// QEMU version, input hashes, state hash and RAM file size.
func checkTemplate(dir string, want Manifest) (*Manifest, error) {
	var m Manifest
	if err := atomicfile.ReadJSON(filepath.Join(dir, tplManifest), &m); err != nil {
		return nil, err
	}
	switch {
	case m.Format != want.Format || m.Key != want.Key:
		return nil, fmt.Errorf("%w %s: key %s format %d, want %s format %d", ErrTemplateStale, dir, m.Key, m.Format, want.Key, want.Format)
	case m.QEMUVersion != want.QEMUVersion:
		return nil, fmt.Errorf("%w %s: made by %q, QEMU is %q", ErrTemplateStale, dir, m.QEMUVersion, want.QEMUVersion)
	case m.KernelHash != want.KernelHash || m.InitrdHash != want.InitrdHash || m.Shape != want.Shape:
		return nil, fmt.Errorf("%w %s: kernel, initramfs or shape differ", ErrTemplateStale, dir)
	}
	if st, err := os.Stat(filepath.Join(dir, tplRAM)); err != nil || st.Size() != m.RAMSize || m.RAMSize != want.RAMSize {
		return nil, fmt.Errorf("%w %s: RAM file missing or of the wrong size (%v)", ErrTemplateStale, dir, err)
	}
	h, err := hashFile(filepath.Join(dir, tplState))
	if err != nil || h != m.StateHash {
		return nil, fmt.Errorf("%w %s: state file does not match its hash (%v)", ErrTemplateStale, dir, err)
	}
	return &m, nil
}

// findTemplate returns the usable template for this UVM, or an error
// saying why there is none (os.ErrNotExist when none was made yet).
func (u *UVM) findTemplate(want Manifest) (string, error) {
	dir := filepath.Join(TemplatesDir(u.cfg.Root), want.Key)
	if _, err := checkTemplate(dir, want); err != nil {
		return "", err
	}
	return dir, nil
}

// migrationDone polls query-migrate until the migration (outgoing or
// incoming) completes or fails.
func migrationDone(ctx context.Context, q *qmp.Client) error {
	for {
		var r struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.Execute(ctx, "query-migrate", nil, &r); err != nil {
			return err
		}
		switch r.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", r.Status, r.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", r.Status, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func ignoreShared(ctx context.Context, q *qmp.Client) error {
	return q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}, nil)
}

// restore loads the template's device state into a QEMU started with
// -incoming defer over a clone of the template's RAM, and resumes it.
func restore(ctx context.Context, q *qmp.Client, dir string) error {
	if err := ignoreShared(ctx, q); err != nil {
		return err
	}
	if err := migrateFromFile(ctx, q, filepath.Join(dir, tplState)); err != nil {
		return err
	}
	return q.Execute(ctx, "cont", nil, nil)
}

// saveTemplate saves this freshly booted UVM as the template want.Key:
// stop, migrate the device state to a file, copy the RAM file. stopped
// says the guest was stopped: the caller resumes it (cont). The template
// is written in a temporary directory and renamed into place; while
// another process saves the same template, this one does not.
func (u *UVM) saveTemplate(ctx context.Context, want Manifest) (stopped bool, err error) {
	tdir := TemplatesDir(u.cfg.Root)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return false, err
	}
	lk, ok, err := flock.TryAcquire(filepath.Join(tdir, want.Key+".lock"))
	if err != nil || !ok {
		return false, err
	}
	defer lk.Release()
	tmp, err := os.MkdirTemp(tdir, ".tmp-"+want.Key+"-")
	if err != nil {
		return false, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	q := u.qmp
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return false, err
	}
	return true, u.writeTemplate(ctx, q, tmp, want)
}

// writeTemplate writes the stopped guest's template into tmp and renames
// tmp into place.
func (u *UVM) writeTemplate(ctx context.Context, q *qmp.Client, tmp string, want Manifest) (err error) {
	tdir := filepath.Dir(tmp)
	if err := ignoreShared(ctx, q); err != nil {
		return err
	}
	state := filepath.Join(tmp, tplState)
	if err := migrateToFile(ctx, q, state); err != nil {
		return err
	}
	// The guest is stopped: its RAM file is stable until cont.
	if err := saveRAM(ctx, u.path("ram"), filepath.Join(tmp, tplRAM)); err != nil {
		return err
	}
	m := want
	m.Created, m.Source = time.Now().UTC(), u.cfg.ID
	if m.StateHash, err = hashFile(state); err != nil {
		return err
	}
	return publishTemplate(tmp, filepath.Join(tdir, want.Key), m)
}

// publishTemplate writes the manifest into the template directory tmp and
// puts it in place of final (a stale one goes), flushing the state, RAM
// and manifest before the rename and the templates directory after it.
func publishTemplate(tmp, final string, m Manifest) error {
	if err := atomicfile.WriteJSON(filepath.Join(tmp, tplManifest), m, false); err != nil {
		return err
	}
	if err := os.RemoveAll(final); err != nil { // a stale one
		return err
	}
	if err := atomicfile.Publish(tmp, final); err != nil {
		return fmt.Errorf("template %s: %w", m.Key, err)
	}
	return nil
}

// setIdentity makes the guest its own machine after a restore (and, for
// uniformity, after a cold boot): fresh host randomness into its RNG, the
// host's wall clock, the UVM id as hostname. The guest's answer is checked.
func (u *UVM) setIdentity(ctx context.Context) error {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("uvm %s: host randomness: %w", u.cfg.ID, err)
	}
	r, err := u.agent.SetIdentity(ctx, agent.IdentityArgs{Seed: seed, UnixNano: time.Now().UnixNano(), Hostname: u.cfg.ID})
	if err != nil {
		return fmt.Errorf("uvm %s: set guest identity: %w", u.cfg.ID, err)
	}
	u.mu.Lock()
	u.identity = r
	u.mu.Unlock()
	return nil
}

// Identity is what the guest reported after its identity was set.
func (u *UVM) Identity() agent.IdentityResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.identity
}

// SetCold makes Start boot the kernel this once, whatever the templates.
func (u *UVM) SetCold(cold bool) { u.cfg.Cold = cold }

// saveRAM copies the stopped guest's RAM file to dst, leaving holes where
// whole pages are zero (about half the pages a freshly booted guest has
// touched), so that every clone's sparse copy moves only the rest.
func saveRAM(ctx context.Context, src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	exts, err := sparse.DataExtents(in, st.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	const page = 4096
	zero := make([]byte, page)
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		for off := e.Off; off < e.Off+e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(len(buf)), e.Off+e.Len-off))
			if _, err := in.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read %s at %d: %w", src, off, err)
			}
			// Write each run of non-zero pages in one call.
			run := -1
			for p := 0; p <= n; p += page {
				nonZero := p < n && !bytes.Equal(buf[p:min(p+page, n)], zero[:min(page, n-p)])
				switch {
				case nonZero && run < 0:
					run = p
				case !nonZero && run >= 0:
					if _, err := out.WriteAt(buf[run:p], off+int64(run)); err != nil {
						return fmt.Errorf("write %s: %w", dst, err)
					}
					run = -1
				}
			}
			off += int64(n)
		}
	}
	return nil
}
