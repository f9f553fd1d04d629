// Package routes reconciles the kernel routes Weft owns. Weft marks every
// route it installs with its own routing protocol number ([Protocol]), so it
// can tell its routes from the ones an operator or another daemon made and
// leaves the latter alone.
package routes

import (
	"errors"
	"fmt"
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
	r := Route{Dst: netip.PrefixFrom(a.Unmap(), bits), LinkIndex: nr.LinkIndex, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0}
	if nr.Gw != nil {
		gw, _ := netip.AddrFromSlice(nr.Gw)
		r.Gw = gw.Unmap()
	}
	return r, true
}

// Result says what one Sync did.
type Result struct {
	Added, Replaced, Removed, Unchanged int
}

// Sync makes Weft's routes of one family (unix.AF_INET or AF_INET6) in the
// main table equal desired, restricted to the destinations owned decides
// (nil: all of Weft's routes of that family). It adds and replaces before it
// removes, keeps going after a failure, and returns the failures joined. A
// desired destination already taken by a route Weft did not make is left
// alone and reported, unless that route is identical to the desired one, in
// which case Weft adopts it.
func Sync(h *netlink.Handle, family int, desired []Route, owned func(Route) bool) (Result, error) {
	var res Result
	all, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}
	ours := make(map[netip.Prefix]Route)
	foreign := make(map[netip.Prefix]Route)
	for _, nr := range all {
		r, ok := fromNetlink(nr)
		if !ok {
			continue
		}
		if nr.Protocol == Protocol {
			if owned == nil || owned(r) {
				ours[r.Dst] = r
			}
		} else if nr.Type == unix.RTN_UNICAST {
			foreign[r.Dst] = r
		}
	}
	var errs []error
	want := make(map[netip.Prefix]bool, len(desired))
	for _, r := range desired {
		want[r.Dst] = true
		if cur, ok := ours[r.Dst]; ok && cur == r {
			res.Unchanged++
			continue
		}
		if f, ok := foreign[r.Dst]; ok {
			if _, mine := ours[r.Dst]; !mine && f != r {
				errs = append(errs, fmt.Errorf("route %s: destination already routed by a route Weft did not make (%s); leaving it alone", r, f))
				continue
			}
		}
		if err := h.RouteReplace(r.netlink()); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		if _, ok := ours[r.Dst]; ok {
			res.Replaced++
		} else {
			res.Added++
		}
	}
	for dst, r := range ours {
		if want[dst] {
			continue
		}
		if err := h.RouteDel(r.netlink()); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", r, err))
			continue
		}
		res.Removed++
	}
	return res, errors.Join(errs...)
}
