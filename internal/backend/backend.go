// Package backend defines the contract between weftd and a datapath
// backend (vxlan, host-gw, udp): a small interface, and a [Kind] that lets
// weftd choose a backend by the name in the network config's Backend.Type.
//
// The agent drives every backend the same way:
//
//	b := kind.New(host, opts)      // parse options, nothing touched yet
//	local := b.Init(ctx)           // create/adopt host devices, say what to publish
//	... agent acquires the lease with local.Type/local.Data, writes subnet.env with local.MTU
//	b.Start(ctx, ownLease)         // subnet-dependent setup, background work
//	b.Reconcile(ctx, peers)        // on start, on every lease change, every resync period
//
// When weftd stops, backends leave the datapath in place so that traffic
// keeps flowing until the next weftd takes over.
package backend

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Host is what a backend knows about the host it runs on.
type Host struct {
	// Network is the validated network configuration.
	Network *config.Network
	// PublicIP is the underlay address published in this host's lease.
	PublicIP netip.Addr
	// Iface is the underlay interface that carries traffic to peers.
	Iface Iface
	// StateDir is a directory that survives restarts, where a backend may
	// keep state of its own (for example a device's MAC address).
	StateDir string
	// Netlink is a handle bound to the host's network namespace. weftd uses
	// the namespace it runs in; tests pass a handle into a test namespace.
	Netlink *netlink.Handle
	// NetNS is the host's network namespace, for work that must run on a
	// thread inside it (creating a TUN device, opening a socket). A closed
	// handle (-1) means the current namespace.
	NetNS netns.NsHandle
	// Log is the backend's logger.
	Log *slog.Logger
}

// Iface describes the underlay interface.
type Iface struct {
	Name  string
	Index int
	MTU   int
	// Addr is the interface's IPv4 address (often equal to PublicIP; not
	// when the host is behind NAT).
	Addr netip.Addr
}

// Local is what a backend contributes to the host's lease and subnet.env.
type Local struct {
	// Type is published as the lease's BackendType ("" for udp, as flannel).
	Type string
	// Data is published as the lease's BackendData (nil for none).
	Data json.RawMessage
	// MTU is the MTU pods on this host should use.
	MTU int
}

// Backend is a datapath. Its methods are called from one goroutine.
type Backend interface {
	// Init creates or adopts the host-wide devices. It runs before the lease
	// is acquired and must accept what a previous weftd left in place.
	Init(ctx context.Context) (Local, error)
	// Start runs once the host holds own: it configures what depends on the
	// host's subnet and launches background work that lasts until ctx is
	// done. It returns when the datapath is ready for traffic.
	Start(ctx context.Context, own lease.Lease) error
	// Reconcile programs the datapath to serve exactly peers: every current
	// lease but this host's own. It compares with the kernel, adds what is
	// missing, removes what Weft made for peers no longer listed, and never
	// touches entries Weft did not make. Leases the backend cannot serve (a
	// different BackendType, bad BackendData, a peer out of reach) are
	// skipped with a logged warning while the other peers are programmed;
	// their errors are joined into the result. Calling it twice with the same
	// peers changes nothing the second time.
	Reconcile(ctx context.Context, peers []lease.Lease) error
}

// Kind is a backend that can be chosen by name.
type Kind struct {
	// Type is the name used in Backend.Type, e.g. "host-gw".
	Type string
	// Validate checks the raw Backend object of the network config and
	// returns an error naming the bad field (a *config.FieldError).
	Validate func(opts json.RawMessage) error
	// New builds the backend for a host from the raw Backend object.
	New func(h Host, opts json.RawMessage) (Backend, error)
}

// Counters is an optional ability of a backend whose packet path runs in
// weftd (udp): monotonically increasing counters by name, such as
// "tx_packets" or "rx_dropped_unknown_sender", served on /metrics.
type Counters interface {
	Counters() map[string]uint64
}
