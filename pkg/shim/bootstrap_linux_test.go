package shim

import (
	"bytes"
	"io"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"google.golang.org/protobuf/proto"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"slices"
)

// TestArgs parses what containerd 1.6 and 2.4 pass (2.x adds -debug and,
// for delete, -bundle).
func TestArgs(t *testing.T) {
	o, info, err := parseArgs(strings.Fields("-namespace k8s.io -address /run/c.sock -publish-binary /usr/bin/containerd -id abc -bundle /b -debug delete"), io.Discard)
	if err != nil || info {
		t.Fatal(err, info)
	}
	want := options{namespace: "k8s.io", address: "/run/c.sock", publishBinary: "/usr/bin/containerd", id: "abc", bundle: "/b", debug: true, action: "delete"}
	if o != want {
		t.Errorf("got %+v, want %+v", o, want)
	}
	if _, info, _ := parseArgs([]string{"-info"}, io.Discard); !info {
		t.Error("-info not recognised")
	}
}

// TestReadBootstrap tells containerd 2.3+ (BootstrapParams naming the
// task on stdin) from 1.6 (nothing, or runtime options).
func TestReadBootstrap(t *testing.T) {
	b, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "abc", Namespace: "ns", ContainerdTtrpcAddress: "/run/c.sock.ttrpc"})
	if p, ok := readBootstrap(bytes.NewReader(b), "abc"); !ok || p.Namespace != "ns" {
		t.Errorf("2.x params not read: %v %v", p, ok)
	}
	if _, ok := readBootstrap(bytes.NewReader(b), "other"); ok {
		t.Error("params of another task taken")
	}
	if _, ok := readBootstrap(bytes.NewReader(nil), "abc"); ok {
		t.Error("empty stdin taken for params")
	}
	if _, ok := readBootstrap(strings.NewReader("\x0a\x03xyz garbage"), "abc"); ok {
		t.Error("garbage taken for params")
	}
}

// TestNames: UVM ids are valid for any containerd id and differ per
// namespace; socket paths fit a unix socket name.
func TestNames(t *testing.T) {
	long := strings.Repeat("a", 76)
	for _, id := range []string{"a", long, "x.y_z-1"} {
		if err := uvm.ValidateID(uvmID("default", id)); err != nil {
			t.Errorf("uvm id for %q: %v", id, err)
		}
	}
	if uvmID("a", "x") == uvmID("b", "x") {
		t.Error("namespaces share a UVM id")
	}
	if p := socketPath("/run/containerd/containerd.sock", "k8s.io", long); len(p) >= 108 {
		t.Errorf("socket path %q too long", p)
	}
}

// -info answers containerd 2.x's runtime introspection with the features
// a VM can honour: no "rro" (see guestFeatures), no user namespaces.
func TestInfoFeatures(t *testing.T) {
	var out bytes.Buffer
	if err := printInfo([]string{"-info"}, &out); err != nil {
		t.Fatal(err)
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out.Bytes(), &info); err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(info.Features)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := v.(*features.Features)
	if !ok || info.Name != RuntimeName || slices.Contains(f.MountOptions, "rro") || !slices.Contains(f.MountOptions, "ro") || f.Linux == nil || slices.Contains(f.Linux.Namespaces, "user") {
		t.Errorf("runtime info %v, features %+v", info.Name, v)
	}
}
