package uvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The agent is found, never built: the path given, else beside the program
// (a test binary has none), else on PATH; when it is nowhere, the error
// says how to get it.
func TestFindAgent(t *testing.T) {
	dir := t.TempDir()
	onPath := filepath.Join(dir, AgentName)
	if err := os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if p, err := FindAgent(""); err != nil || p != onPath {
		t.Fatalf("on PATH: %q, %v", p, err)
	}
	given := filepath.Join(t.TempDir(), "my-agent")
	os.WriteFile(given, nil, 0o755)
	if p, err := FindAgent(given); err != nil || p != given {
		t.Fatalf("given: %q, %v", p, err)
	}
	if _, err := FindAgent(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing given agent: %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	_, err := FindAgent("")
	if err == nil || !strings.Contains(err.Error(), "scripts/demo.sh") || !strings.Contains(err.Error(), "go build") {
		t.Fatalf("no agent anywhere: %v", err)
	}
}
