package containerdtest

import (
	"context"
	"errors"
	"fmt"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/leases"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Client is a gRPC connection to the daemon's Snapshots service: the path a
// runtime takes (CRI, a shim's caller), without a ctr process per call.
// What it prepares is held by a lease of its own, as a runtime's snapshots
// are, so that containerd's gc leaves them alone.
type Client struct {
	conn   *grpc.ClientConn
	ns     string
	leases leases.Manager
	lease  leases.Lease
}

// Dial connects to the daemon's socket and takes a lease, in the namespace
// Ctr uses.
func (d *Daemon) Dial(ctx context.Context) (*Client, error) { return d.DialIn(ctx, namespace) }

// DialIn is Dial for namespace ns.
func (d *Daemon) DialIn(ctx context.Context, ns string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial containerd %s: %w", d.Socket, err)
	}
	c := &Client{conn: conn, ns: ns, leases: leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))}
	if c.lease, err = c.leases.Create(namespaces.WithNamespace(ctx, ns), leases.WithRandomID()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("lease from containerd %s: %w", d.Socket, err)
	}
	return c, nil
}

// Close ends the lease and closes the connection.
func (c *Client) Close() error {
	err := c.leases.Delete(namespaces.WithNamespace(context.Background(), c.ns), c.lease)
	return errors.Join(err, c.conn.Close())
}

// Context is ctx in the client's namespace, under its lease.
func (c *Client) Context(ctx context.Context) context.Context {
	return leases.WithLease(namespaces.WithNamespace(ctx, c.ns), c.lease.ID)
}

// Snapshotter is the named snapshotter as containerd serves it (calls
// take the client's namespace from Context).
func (c *Client) Snapshotter(name string) snapshots.Snapshotter {
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(c.conn), name)
}

// PrepareMount prepares an active snapshot key on parent with the named
// snapshotter through containerd and mounts it at target with containerd's
// own mount code, as a runtime does: the rootfs-ready path.
func (c *Client) PrepareMount(ctx context.Context, snapshotter, key, parent, target string) error {
	mounts, err := c.Snapshotter(snapshotter).Prepare(c.Context(ctx), key, parent)
	if err != nil {
		return fmt.Errorf("prepare %s: %w", key, err)
	}
	if err := mount.All(mounts, target); err != nil {
		return fmt.Errorf("mount %s at %s: %w", key, target, err)
	}
	return nil
}

// Release unmounts target and removes snapshot key.
func (c *Client) Release(ctx context.Context, snapshotter, key, target string) error {
	if err := mount.UnmountAll(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return c.Snapshotter(snapshotter).Remove(c.Context(ctx), key)
}
