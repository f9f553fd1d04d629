// Package hostgw is the host-gw backend: no encapsulation, one kernel route
// per peer, "peer's subnet via peer's underlay address". It is the fastest
// datapath but needs every host on one L2 segment, because the next hop must
// be directly reachable; a peer that is not is refused with an error naming
// it, and the other peers still work.
package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/routes"
	"golang.org/x/sys/unix"
)

// Type is the backend's name in Backend.Type and in leases.
const Type = "host-gw"

// options are the backend's options; host-gw has none besides Type.
type options struct{}

// Kind returns the host-gw backend's descriptor.
func Kind() backend.Kind {
	return backend.Kind{
		Type: Type,
		Validate: func(raw json.RawMessage) error {
			var o options
			return backend.DecodeOptions(raw, &o)
		},
		New: func(h backend.Host, raw json.RawMessage) (backend.Backend, error) {
			var o options
			if err := backend.DecodeOptions(raw, &o); err != nil {
				return nil, err
			}
			return &Backend{host: h}, nil
		},
	}
}

// Backend programs host-gw routes.
type Backend struct {
	host backend.Host
	own  lease.Lease
}

// Init publishes BackendType "host-gw"; pods use the underlay's MTU.
func (b *Backend) Init(context.Context) (backend.Local, error) {
	return backend.Local{Type: Type, MTU: b.host.Iface.MTU}, nil
}

// Start remembers the host's own lease; host-gw needs no device.
func (b *Backend) Start(_ context.Context, own lease.Lease) error {
	b.own = own
	return nil
}

// Reconcile installs a route to each host-gw peer's subnet via its
// PublicIP and removes Weft's routes to subnets no longer leased.
func (b *Backend) Reconcile(_ context.Context, peers []lease.Lease) error {
	connected, err := b.connectedNets()
	if err != nil {
		return err
	}
	var errs []error
	desired := make([]routes.Route, 0, len(peers))
	for _, p := range peers {
		if p.Attrs.BackendType != Type {
			errs = append(errs, fmt.Errorf("peer %s (%s): backend %q, not %s; not routed", p.Subnet, p.Attrs.PublicIP, p.Attrs.BackendType, Type))
			continue
		}
		if !b.host.Network.Network.Contains(p.Subnet.Addr()) || p.Subnet.Overlaps(b.own.Subnet) {
			errs = append(errs, fmt.Errorf("peer %s (%s): subnet outside the network %s or overlapping ours; not routed", p.Subnet, p.Attrs.PublicIP, b.host.Network.Network))
			continue
		}
		link, ok := connected.lookup(p.Attrs.PublicIP)
		if !ok {
			errs = append(errs, fmt.Errorf("peer %s: PublicIP %s is not on a directly connected network, so host-gw cannot route to it (all hosts must share one L2 segment; use the vxlan backend, or vxlan with DirectRouting, otherwise)", p.Subnet, p.Attrs.PublicIP))
			continue
		}
		desired = append(desired, routes.Route{Dst: p.Subnet, Gw: p.Attrs.PublicIP, LinkIndex: link})
	}
	res, err := routes.Sync(b.host.Netlink, unix.AF_INET, desired, b.ownedRoute)
	if err != nil {
		errs = append(errs, err)
	}
	if res.Added+res.Replaced+res.Removed > 0 {
		b.host.Log.Info("host-gw routes reconciled", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed, "unchanged", res.Unchanged)
	}
	return errors.Join(errs...)
}

// ownedRoute limits reconciliation to Weft's routes inside the overlay.
func (b *Backend) ownedRoute(r routes.Route) bool {
	return r.Dst.Addr().Is4() && b.host.Network.Network.Contains(r.Dst.Addr())
}

// connected is the host's directly connected IPv4 networks.
type connected []struct {
	prefix netip.Prefix
	link   int
}

func (c connected) lookup(a netip.Addr) (int, bool) {
	for _, n := range c {
		if n.prefix.Contains(a) {
			return n.link, true
		}
	}
	return 0, false
}

// connectedNets lists the prefixes of the host's IPv4 addresses (one
// netlink dump, whatever the number of peers), leaving out the overlay.
func (b *Backend) connectedNets() (connected, error) {
	addrs, err := b.host.Netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("host-gw: list addresses: %w", err)
	}
	var c connected
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || a.IPNet == nil {
			continue
		}
		bits, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip, bits).Masked()
		if bits == 32 || ip.IsLoopback() || b.host.Network.Network.Overlaps(p) {
			continue
		}
		c = append(c, struct {
			prefix netip.Prefix
			link   int
		}{p, a.LinkIndex})
	}
	return c, nil
}
