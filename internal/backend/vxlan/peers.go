package vxlan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/lease"
)

// hwAddr is an Ethernet address usable as a map key.
type hwAddr [6]byte

func (m hwAddr) String() string { return net.HardwareAddr(m[:]).String() }

// slice returns the address as a net.HardwareAddr.
func (m hwAddr) slice() net.HardwareAddr { return net.HardwareAddr(bytes.Clone(m[:])) }

// isZero reports whether m is 00:00:00:00:00:00.
func (m hwAddr) isZero() bool { return m == hwAddr{} }

// parseHwAddr parses a unicast Ethernet address.
func parseHwAddr(s string) (hwAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return hwAddr{}, fmt.Errorf("%q is not a MAC address", s)
	}
	return toHwAddr(hw)
}

// toHwAddr checks that hw is a 6-byte unicast, non-zero address.
func toHwAddr(hw net.HardwareAddr) (hwAddr, error) {
	var m hwAddr
	if len(hw) != len(m) {
		return m, fmt.Errorf("%q is not a 6-byte Ethernet address", hw)
	}
	copy(m[:], hw)
	if m.isZero() {
		return m, fmt.Errorf("%q is the zero address", hw)
	}
	if m[0]&1 != 0 {
		return m, fmt.Errorf("%q is a multicast address", hw)
	}
	return m, nil
}

// leaseData is the lease's BackendData, field for field flannel's
// vxlanLeaseAttrs.
type leaseData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

func encodeLeaseData(vni int, mac hwAddr) json.RawMessage {
	b, _ := json.Marshal(leaseData{VNI: vni, VtepMAC: mac.String()}) // cannot fail: two plain fields
	return b
}

// peer is a validated vxlan peer.
type peer struct {
	subnet netip.Prefix
	public netip.Addr
	mac    hwAddr
	// data is the BackendData the peer was decoded from, to skip decoding
	// it again while it does not change.
	data string
	// index is the peer's position in its table's peers.
	index int
	// direct is set when DirectRouting applies: the peer is reached by a
	// plain route over the underlay, without encapsulation.
	direct bool
}

// decodePeer checks a lease written by another host (untrusted) and turns
// it into a peer. The error names the lease and the field.
func decodePeer(l lease.Lease, vni int) (peer, error) {
	name := func() string { return "lease " + l.Subnet.String() }
	if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() || l.Subnet.Masked() != l.Subnet {
		return peer{}, fmt.Errorf("%s: Subnet is not an IPv4 network prefix", name())
	}
	if l.Attrs.BackendType != "vxlan" {
		return peer{}, fmt.Errorf("%s: BackendType is %q, not \"vxlan\"", name(), l.Attrs.BackendType)
	}
	if !l.Attrs.PublicIP.Is4() || l.Attrs.PublicIP.IsUnspecified() || l.Attrs.PublicIP.IsMulticast() {
		return peer{}, fmt.Errorf("%s: PublicIP %q is not a unicast IPv4 address", name(), l.Attrs.PublicIP)
	}
	var d leaseData
	if err := json.Unmarshal(l.Attrs.BackendData, &d); err != nil {
		return peer{}, fmt.Errorf("%s: BackendData is not {\"VNI\":…,\"VtepMAC\":\"…\"}: %w", name(), err)
	}
	if d.VNI != vni {
		return peer{}, fmt.Errorf("%s: BackendData.VNI is %d, this host uses %d", name(), d.VNI, vni)
	}
	mac, err := parseHwAddr(d.VtepMAC)
	if err != nil {
		return peer{}, fmt.Errorf("%s: BackendData.VtepMAC %w", name(), err)
	}
	return peer{subnet: l.Subnet, public: l.Attrs.PublicIP, mac: mac, data: string(l.Attrs.BackendData)}, nil
}

// peerTable indexes the current peers. It is immutable once built, so the
// reactive miss handler can read it without locks.
type peerTable struct {
	peers    []*peer
	bySubnet map[netip.Prefix]*peer
	byMAC    map[hwAddr]*peer
	lens     []int // distinct subnet lengths, longest first
	// skipped counts the leases left out (own lease included), so sameAs
	// can tell an unchanged lease set without decoding it again.
	skipped int
	own     netip.Prefix
}

// sameAs reports whether leases would build exactly this table: every
// lease is either one of its peers, unchanged, or this host's own, and no
// lease was left out before (a bad lease must be reported again). Resyncs
// of thousands of unchanged peers then cost no allocation here.
func (t *peerTable) sameAs(leases []lease.Lease, own netip.Prefix, direct func(netip.Addr) bool) bool {
	if t == nil || t.skipped != 0 || t.own != own {
		return false
	}
	n := 0
	for i := range leases {
		l := &leases[i]
		if l.Subnet == own {
			continue
		}
		p := t.bySubnet[l.Subnet]
		if p == nil || p.public != l.Attrs.PublicIP || l.Attrs.BackendType != "vxlan" || p.data != string(l.Attrs.BackendData) ||
			p.direct != (direct != nil && direct(p.public)) {
			return false
		}
		n++
	}
	return n == len(t.peers)
}

// buildPeers validates leases and returns the table of peers to serve.
// Leases that cannot be served are left out and reported, one error each.
// own is this host's subnet, network the overlay; direct reports whether a
// public address is on the underlay's segment (nil: never); prev is the
// previous table (its decoded peers are reused); self holds this host's
// PublicIP and VtepMAC, which no peer may claim.
func buildPeers(leases []lease.Lease, own, network netip.Prefix, vni int, direct func(netip.Addr) bool, prev *peerTable, self peer) (*peerTable, []error) {
	if prev.sameAs(leases, own, direct) {
		return prev, nil
	}
	t := &peerTable{
		bySubnet: make(map[netip.Prefix]*peer, len(leases)),
		byMAC:    make(map[hwAddr]*peer, len(leases)),
		own:      own,
	}
	var errs []error
	for _, l := range leases {
		if l.Subnet == own {
			continue
		}
		p, err := buildPeer(l, vni, prev)
		if err == nil {
			err = t.admit(&p, own, network, direct, self)
		}
		if err != nil {
			t.skipped++
			errs = append(errs, err)
			continue
		}
	}
	return t, errs
}

// buildPeer decodes a lease, reusing the previous table's peer when the
// lease is unchanged.
func buildPeer(l lease.Lease, vni int, prev *peerTable) (peer, error) {
	if old := prev.get(l.Subnet); old != nil && old.public == l.Attrs.PublicIP && l.Attrs.BackendType == "vxlan" && old.data == string(l.Attrs.BackendData) {
		p := *old
		p.index = 0
		return p, nil
	}
	return decodePeer(l, vni)
}

// admit checks a decoded peer against this host and the peers already in
// the table, and adds it.
func (t *peerTable) admit(pp *peer, own, network netip.Prefix, direct func(netip.Addr) bool, self peer) error {
	p := pp
	switch {
	case p.mac == self.mac || (self.public.IsValid() && p.public == self.public):
		return fmt.Errorf("lease %s: PublicIP %s / VtepMAC %s are this host's own (a stale lease of this host?)", p.subnet, p.public, p.mac)
	case !network.Contains(p.subnet.Addr()) || p.subnet.Bits() < network.Bits():
		return fmt.Errorf("lease %s: Subnet lies outside the network %s", p.subnet, network)
	case own.IsValid() && own.Overlaps(p.subnet):
		return fmt.Errorf("lease %s: Subnet overlaps this host's subnet %s", p.subnet, own)
	}
	if _, dup := t.bySubnet[p.subnet]; dup {
		return fmt.Errorf("lease %s: listed twice", p.subnet)
	}
	p.direct = direct != nil && direct(p.public)
	if !p.direct {
		if o, dup := t.byMAC[p.mac]; dup {
			return fmt.Errorf("lease %s: BackendData.VtepMAC %s is already used by lease %s", p.subnet, p.mac, o.subnet)
		}
		t.byMAC[p.mac] = p
	}
	p.index = len(t.peers)
	t.bySubnet[p.subnet] = p
	t.peers = append(t.peers, p)
	if !slices.Contains(t.lens, p.subnet.Bits()) {
		t.lens = append(t.lens, p.subnet.Bits())
		slices.SortFunc(t.lens, func(a, b int) int { return b - a })
	}
	return nil
}

// lookupIP returns the peer whose subnet holds a, or nil.
func (t *peerTable) lookupIP(a netip.Addr) *peer {
	if t == nil || !a.Is4() {
		return nil
	}
	for _, bits := range t.lens {
		pfx, _ := a.Prefix(bits)
		if p := t.bySubnet[pfx]; p != nil {
			return p
		}
	}
	return nil
}

// get returns the peer of a subnet, or nil.
func (t *peerTable) get(p netip.Prefix) *peer {
	if t == nil {
		return nil
	}
	return t.bySubnet[p]
}
