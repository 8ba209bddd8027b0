package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/agent"
)

// The guest server runs on the host here, over an in-memory pipe, with a
// temp directory as its allowed root. Real VMs test it as PID 1.
func serve(t *testing.T) (*agent.Client, net.Conn, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "run")
	os.MkdirAll(root, 0o755)
	c, conn := serveWith(t, &Server{Roots: []string{root}})
	return c, conn, root
}

func serveWith(t *testing.T, s *Server) (*agent.Client, net.Conn) {
	t.Helper()
	hostEnd, guestEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); hostEnd.Close(); guestEnd.Close() })
	go s.Serve(ctx, guestEnd)
	return agent.NewClient(hostEnd), hostEnd
}

// The shipped agent's Server (no Roots) allows guestpath.AllowedRoots
// only: no test root, none of the agent's own state.
func TestServerDefaultRoots(t *testing.T) {
	c, _ := serveWith(t, &Server{})
	ctx := context.Background()
	for _, p := range []string{"/run/test/x", "/run/layers/x", guestpath.Bundle("x"), guestpath.RuntimeState + "/x", "/etc"} {
		if _, err := c.Stat(ctx, p); !agent.IsCode(err, agent.CodeOutsideRoots) {
			t.Errorf("stat %s: %v, want %s", p, err, agent.CodeOutsideRoots)
		}
	}
	for _, r := range guestpath.AllowedRoots() {
		p := r + "/no-such-entry-of-this-test"
		if _, err := c.Stat(ctx, p); err == nil || agent.IsCode(err, agent.CodeOutsideRoots) {
			t.Errorf("stat %s: %v, want not found", p, err)
		}
	}
}

func TestServerOps(t *testing.T) {
	c, _, root := serve(t)
	ctx := context.Background()
	dir := filepath.Join(root, "a", "b")
	if err := c.Mkdir(ctx, dir); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stat(ctx, dir)
	if err != nil || !st.IsDir {
		t.Fatalf("stat: %+v %v", st, err)
	}
	names, err := c.List(ctx, filepath.Join(root, "a"))
	if err != nil || len(names) != 1 || names[0] != "b" {
		t.Fatalf("list: %v %v", names, err)
	}
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Args: []string{"sh", "-c", "cat; echo err >&2; exit 4"}, Stdin: strings.NewReader("from stdin\n"), Stdout: &out, Stderr: &errb})
	if err != nil || code != 4 || out.String() != "from stdin\n" || errb.String() != "err\n" {
		t.Fatalf("exec: code %d err %v out %q stderr %q", code, err, out.String(), errb.String())
	}
	if _, err := c.Exec(ctx, agent.ExecRequest{Args: []string{"no-such-command-xyz"}}); !agent.IsCode(err, agent.CodeExecNotFound) {
		t.Fatalf("missing command: %v", err)
	}
	for _, p := range []string{"/etc", root + "/../etc", "relative"} {
		if err := c.Mkdir(ctx, p); err == nil {
			t.Errorf("mkdir %s accepted", p)
		}
	}
	os.Symlink("/etc", filepath.Join(root, "link"))
	if _, err := c.Stat(ctx, filepath.Join(root, "link", "passwd")); !agent.IsCode(err, agent.CodeOutsideRoots) {
		t.Fatalf("symlink escape: %v", err)
	}
}

func TestServerBadFrames(t *testing.T) {
	c, conn, root := serve(t)
	ctx := context.Background()
	// Garbage, a frame claiming 2 MiB, and malformed JSON: the server
	// answers with errors and stays in sync for the next request.
	var frame bytes.Buffer
	frame.WriteString("garbage")
	frame.WriteString("LVA1")
	binary.Write(&frame, binary.BigEndian, uint32(2<<20))
	frame.WriteString("LVA1")
	binary.Write(&frame, binary.BigEndian, uint32(5))
	frame.WriteString("{nope")
	go conn.Write(frame.Bytes())
	time.Sleep(100 * time.Millisecond)
	if err := c.Mkdir(ctx, filepath.Join(root, "after")); err != nil {
		t.Fatalf("server out of sync after bad frames: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "after")); err != nil {
		t.Fatal(err)
	}
	// A client refuses to send an oversized message.
	big := make([]string, 0)
	for i := 0; i < 20000; i++ {
		big = append(big, strings.Repeat("x", 100))
	}
	if _, err := c.Exec(ctx, agent.ExecRequest{Args: big}); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized request: %v", err)
	}
}
