package vxlan

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/routes"
)

// reactiveIdle is how long reactive entries for a peer stay after the last
// frame sent to it. The device's own FDB ageing is off in reactive mode (it
// counts from the last update, not the last use, and would cut active
// flows); Weft expires entries itself on Reconcile.
const reactiveIdle = 5 * time.Minute

// reactiveFDBAge is the device's FDB ageing in reactive mode, in seconds: a
// year, in effect off (the kernel reads 0 as its default of 300 s).
const reactiveFDBAge = 365 * 24 * 3600

// userHZ is the unit of the kernel's neighbour cache timestamps.
const userHZ = 100

// syncStats counts what one sync changed.
type syncStats struct {
	fdbAdded, neighAdded, neighRemoved, fdbRemoved int
	routesAdded, routesRemoved                     int
	routes                                         routes.Result
}

func (s syncStats) changed() bool { return s.changes() > 0 }

// changes counts the kernel entries written or removed.
func (s syncStats) changes() int {
	return s.fdbAdded + s.neighAdded + s.neighRemoved + s.fdbRemoved + s.routesAdded + s.routesRemoved + s.routes.Added + s.routes.Replaced + s.routes.Removed
}

func ipOf(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

func fdbEntry(idx int, mac hwAddr, dst netip.Addr, state int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_BRIDGE,
		State:        state,
		Flags:        netlink.NTF_SELF,
		HardwareAddr: mac.slice(),
		IP:           dst.AsSlice(),
	}
}

func neighEntry(idx int, ip netip.Addr, mac hwAddr, state int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_INET,
		State:        state,
		Type:         unix.RTN_UNICAST,
		IP:           ip.AsSlice(),
		HardwareAddr: mac.slice(),
	}
}

// scratch returns a cleared []bool of length n, reused across syncs.
func (b *Backend) scratch(n int) []bool {
	if cap(b.have) < n {
		b.have = make([]bool, n)
	}
	b.have = b.have[:n]
	clear(b.have)
	return b.have
}

// syncEntries makes the FDB, neighbour table and routes of the device idx
// serve exactly the peers in t. One dump per table; writes only for
// differences; adds FDB → neighbour → route and removes route → neighbour →
// FDB, so the kernel never has to ARP across the tunnel. It keeps going
// after a failure and returns the failures joined.
func (b *Backend) syncEntries(idx int, t *peerTable, own netip.Prefix) (syncStats, error) {
	var st syncStats
	h := b.host.Netlink
	static := b.s.mode == ModeStatic
	var errs []error
	if b.rcv == nil {
		b.rcv = make([]byte, 256<<10)
	}
	bt, err := newBatcher(b.host.NetNS, b.rcv)
	if err != nil {
		return st, err
	}
	defer bt.close()
	fdbs, err := bt.listEntries(unix.AF_BRIDGE, idx, b.fdbs[:0])
	b.fdbs = fdbs
	if err != nil {
		return st, fmt.Errorf("list FDB of %s: %w", b.s.device, err)
	}
	neighs, err := bt.listEntries(unix.AF_INET, idx, b.neighs[:0])
	b.neighs = neighs
	if err != nil {
		return st, fmt.Errorf("list neighbours of %s: %w", b.s.device, err)
	}

	// Adds: FDB first, then neighbours.
	if static {
		// have[i] says peer i's entry is in place; indexes, not maps, so a
		// resync of thousands of peers allocates next to nothing.
		have := b.scratch(len(t.peers))
		for _, f := range fdbs {
			if f.state&netlink.NUD_PERMANENT == 0 || !f.hasMAC {
				continue
			}
			if p := t.byMAC[f.mac]; p != nil && f.ip == p.public {
				have[p.index] = true
			}
		}
		for _, p := range t.peers {
			if !p.direct && !have[p.index] {
				bt.setFDB(idx, p.mac, p.public, netlink.NUD_PERMANENT)
				st.fdbAdded++
			}
		}
		if err := bt.done(); err != nil {
			errs = append(errs, err)
		}
		have = b.scratch(len(t.peers))
		for _, n := range neighs {
			if n.state&netlink.NUD_PERMANENT == 0 || !n.hasMAC {
				continue
			}
			if p := t.lookupIP(n.ip); p != nil && n.ip == p.subnet.Addr() && n.mac == p.mac {
				have[p.index] = true
			}
		}
		for _, p := range t.peers {
			if p.direct || have[p.index] {
				continue
			}
			bt.setNeigh(idx, p.subnet.Addr(), p.mac, netlink.NUD_PERMANENT)
			st.neighAdded++
		}
		if err := bt.done(); err != nil {
			errs = append(errs, err)
		}
	}

	// Routes: adds and removals (package routes adds before it removes).
	underlay := b.host.Iface.Index
	network := b.host.Network.Network
	want := b.want[:0]
	defer func() { b.want = want[:0] }()
	if !static {
		want = append(want, routes.Route{Dst: network, LinkIndex: idx})
	}
	for _, p := range t.peers {
		switch {
		case p.direct:
			want = append(want, routes.Route{Dst: p.subnet, Gw: p.public, LinkIndex: underlay})
		case static:
			want = append(want, routes.Route{Dst: p.subnet, Gw: p.subnet.Addr(), LinkIndex: idx, OnLink: true})
		}
	}
	owned := func(r routes.Route) bool {
		if r.Dst == own || !network.Overlaps(r.Dst) {
			return false
		}
		return r.LinkIndex == idx || (underlay != 0 && r.LinkIndex == underlay)
	}
	// Routes are written in batches with a spread metric (see routes.Metric):
	// new and changed ones first, then Weft's routes nobody wants any more.
	// Package routes is the fallback for what this fast path leaves alone:
	// destinations also routed by someone else, and failures.
	rs, err := b.syncRoutes(bt, want, owned)
	st.routesAdded, st.routesRemoved = rs.added, rs.removed
	if err != nil {
		errs = append(errs, err)
	}
	if err != nil || rs.conflicts {
		res, err := routes.Sync(h, unix.AF_INET, want, owned)
		st.routes = res
		if err != nil {
			errs = append(errs, err)
		}
	}

	// Reactive entries expire when their peer has not been sent anything
	// for b.idle: the FDB entry's "used" time is refreshed by every
	// transmitted frame (the neighbour's is not a usable signal: answering
	// the kernel's probes refreshes it).
	var idle map[hwAddr]bool
	if !static {
		idle = map[hwAddr]bool{}
		for _, f := range fdbs {
			if f.state&netlink.NUD_PERMANENT == 0 && f.hasMAC && time.Duration(f.used)*time.Second/userHZ > b.idle {
				idle[f.mac] = true
			}
		}
	}

	// Removals: neighbours, then FDB.
	for _, n := range neighs {
		if !n.hasMAC {
			continue // no link-layer address: the kernel is resolving it
		}
		ip, m := n.ip, n.mac
		p := t.lookupIP(ip)
		var keep bool
		switch {
		case n.state&netlink.NUD_PERMANENT != 0:
			// A wrong MAC at a desired address was replaced above.
			keep = static && p != nil && !p.direct && ip == p.subnet.Addr()
		case n.state&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
			keep = p != nil && !p.direct && p.mac == m && !idle[m]
		default:
			continue
		}
		if keep {
			continue
		}
		bt.delNeigh(idx, ip)
		st.neighRemoved++
	}
	if err := bt.done(); err != nil {
		errs = append(errs, ignoreMissing(err))
	}
	for _, f := range fdbs {
		if !f.hasMAC {
			continue // zero (default destination) or multicast: not Weft's
		}
		m, dst := f.mac, f.ip
		var keep bool
		p := t.byMAC[m]
		switch {
		case f.state&netlink.NUD_PERMANENT != 0:
			keep = static && p != nil && dst == p.public
		case f.state&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
			keep = p != nil && dst == p.public && !idle[m]
		default:
			continue
		}
		if keep {
			continue
		}
		bt.delFDB(idx, m, dst)
		st.fdbRemoved++
	}
	if err := bt.done(); err != nil {
		errs = append(errs, ignoreMissing(err))
	}
	return st, errors.Join(errs...)
}

// ignoreMissing drops "no such entry" failures from a joined error: the
// entry is gone, which is what a removal wanted.
func ignoreMissing(err error) error {
	var keep []error
	for _, e := range unwrapJoined(err) {
		if !errors.Is(e, unix.ENOENT) && !errors.Is(e, unix.ESRCH) {
			keep = append(keep, e)
		}
	}
	return errors.Join(keep...)
}

func unwrapJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// routeSync says what syncRoutes did.
type routeSync struct {
	added, removed int
	// conflicts is set when a desired destination is also routed by a
	// route Weft did not make; package routes decides those.
	conflicts bool
}

// syncRoutes makes Weft's routes (protocol 87, in the main table, those
// owned accepts) equal want, in batches: a desired route that is missing is
// added; one that differs (or is there more than once, with several
// metrics) is removed and added again in the same batch; Weft's routes not
// wanted are removed after the adds. Destinations that also carry a route
// Weft did not make are left to package routes.
func (b *Backend) syncRoutes(bt *batcher, want []routes.Route, owned func(routes.Route) bool) (routeSync, error) {
	var rs routeSync
	if b.routeDump.one == nil {
		b.routeDump = routeDump{one: map[netip.Prefix]kroute{}, more: map[netip.Prefix][]kroute{}}
	}
	cur := &b.routeDump
	if err := bt.listMainRoutes(cur); err != nil {
		return rs, fmt.Errorf("list routes: %w", err)
	}
	if b.wanted == nil {
		b.wanted = map[netip.Prefix]bool{}
	}
	wanted := b.wanted
	clear(wanted)
	for _, r := range want {
		wanted[r.Dst] = true
		first, ok := cur.one[r.Dst]
		if !ok {
			bt.addRoute(r, routes.Metric(r.Dst))
			rs.added++
			continue
		}
		foreign, weft := false, 0
		cur.each(r.Dst, func(k kroute) {
			if k.proto == uint8(routes.Protocol) {
				weft++
			} else {
				foreign = true
			}
		})
		if foreign {
			rs.conflicts = true
			continue
		}
		if weft == 1 && first.gw == r.Gw && first.oif == r.LinkIndex && first.onlink == r.OnLink {
			continue
		}
		cur.each(r.Dst, func(k kroute) { bt.delRoute(r.Dst, k.metric) })
		bt.addRoute(r, routes.Metric(r.Dst))
		rs.added++
	}
	if err := bt.done(); err != nil {
		return rs, err
	}
	for dst := range cur.one {
		if wanted[dst] {
			continue
		}
		cur.each(dst, func(k kroute) {
			if k.proto == uint8(routes.Protocol) && k.oif >= 0 && owned(routes.Route{Dst: dst, Gw: k.gw, LinkIndex: k.oif, OnLink: k.onlink}) {
				bt.delRoute(dst, k.metric)
				rs.removed++
			}
		})
	}
	return rs, ignoreMissing(bt.done())
}
