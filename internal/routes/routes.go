// Package routes reconciles the kernel routes Weft owns. Weft marks every
// route it installs with its own routing protocol number ([Protocol]), so it
// can tell its routes from the ones an operator or another daemon made and
// leaves the latter alone.
package routes

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol is the rtm_protocol value of Weft's routes (shown by `ip route`
// as "proto 87"; name it with /etc/iproute2/rt_protos.d if you like).
const Protocol netlink.RouteProtocol = 87

// Route is a desired IPv4 or IPv6 unicast route in the main table.
type Route struct {
	// Dst is the destination prefix, e.g. a peer's subnet.
	Dst netip.Prefix
	// Gw is the next hop; invalid for a device route.
	Gw netip.Addr
	// LinkIndex is the output device.
	LinkIndex int
	// OnLink marks the gateway as directly reachable on the device even
	// without a matching connected route (used through VXLAN devices).
	OnLink bool
	// Metric is the route's priority; [Sync] sets it with [Metric].
	Metric uint32
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += fmt.Sprintf(" dev #%d", r.LinkIndex)
	if r.OnLink {
		s += " onlink"
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:       prefixToIPNet(r.Dst),
		LinkIndex: r.LinkIndex,
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
		Scope:     netlink.SCOPE_UNIVERSE,
		Priority:  int(r.Metric),
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// fromNetlink converts a kernel route to a Route; ok is false for routes
// Weft would never install (other tables, multipath, no destination).
func fromNetlink(nr netlink.Route) (Route, bool) {
	if nr.Dst == nil || len(nr.MultiPath) > 0 {
		return Route{}, false
	}
	a, ok := netip.AddrFromSlice(nr.Dst.IP)
	if !ok {
		return Route{}, false
	}
	bits, _ := nr.Dst.Mask.Size()
	r := Route{Dst: netip.PrefixFrom(a.Unmap(), bits), LinkIndex: nr.LinkIndex, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0, Metric: uint32(nr.Priority)}
	if nr.Gw != nil {
		gw, _ := netip.AddrFromSlice(nr.Gw)
		r.Gw = gw.Unmap()
	}
	return r, true
}

// Metric returns the metric Weft gives its route to dst. The kernel hashes
// a route's next-hop information by protocol, scope, preferred source,
// metric and device, but not by gateway, so thousands of routes through one
// device with distinct gateways (one per peer) would share one hash chain
// and every insert would walk it (5000 peers: 80 µs a route instead of
// 12). The metric is the one free key; derived from the destination it is
// stable, and it changes nothing for lookups because Weft's destinations
// never overlap each other.
func Metric(dst netip.Prefix) uint32 {
	h := fnv.New32a()
	h.Write(dst.Addr().AsSlice())
	h.Write([]byte{byte(dst.Bits())})
	return 1 + h.Sum32()%4093
}

// Result says what one Sync did.
type Result struct {
	Added, Replaced, Removed, Unchanged int
}

// Sync makes Weft's routes of one family (unix.AF_INET or AF_INET6) in the
// main table equal desired, restricted to the routes owned accepts (nil:
// all of Weft's routes of that family). Each desired route gets the metric
// [Metric] derives from its destination. Sync adds and replaces before it
// removes, keeps going after a failure, and returns the failures joined. A
// desired destination already taken by a route Weft did not make is left
// alone and reported, unless that route is identical but for its metric and
// protocol (a route flannel left behind, say), in which case Weft takes it
// over: its own route is added, then the old one removed.
func Sync(h *netlink.Handle, family int, desired []Route, owned func(Route) bool) (Result, error) {
	var res Result
	all, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}
	ours := make(map[netip.Prefix][]Route)
	foreign := make(map[netip.Prefix]netlink.Route)
	for _, nr := range all {
		r, ok := fromNetlink(nr)
		if !ok {
			continue
		}
		if nr.Protocol == Protocol {
			if owned == nil || owned(r) {
				ours[r.Dst] = append(ours[r.Dst], r)
			}
		} else if nr.Type == unix.RTN_UNICAST {
			foreign[r.Dst] = nr
		}
	}
	var errs []error
	var takeOver []netlink.Route
	written := make(map[netip.Prefix]Route, len(desired)) // what is in place now
	want := make(map[netip.Prefix]bool, len(desired))
	for _, r := range desired {
		r.Metric = Metric(r.Dst)
		want[r.Dst] = true
		cur := ours[r.Dst]
		if len(cur) == 1 && cur[0] == r {
			written[r.Dst] = r
			res.Unchanged++
			continue
		}
		if f, ok := foreign[r.Dst]; ok && len(cur) == 0 {
			fr, _ := fromNetlink(f)
			if fr.Gw != r.Gw || fr.LinkIndex != r.LinkIndex || fr.OnLink != r.OnLink {
				errs = append(errs, fmt.Errorf("route %s: destination already routed by a route Weft did not make (%s); leaving it alone", r, fr))
				continue
			}
			takeOver = append(takeOver, f)
		}
		if err := h.RouteReplace(r.netlink()); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		written[r.Dst] = r
		if len(cur) > 0 {
			res.Replaced++
		} else {
			res.Added++
		}
	}
	for _, f := range takeOver {
		if err := h.RouteDel(&f); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("take over route to %s: remove the old route: %w", f.Dst, err))
		}
	}
	for dst, list := range ours {
		for _, r := range list {
			w, ok := written[dst]
			if ok && w.Metric == r.Metric {
				continue // the desired route itself, or replaced in place by it
			}
			if !ok && want[dst] {
				continue // writing the desired route failed: keep what routes it now
			}
			if err := h.RouteDel(r.netlink()); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route %s: %w", r, err))
				continue
			}
			res.Removed++
		}
	}
	return res, errors.Join(errs...)
}
