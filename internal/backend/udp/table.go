package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/lease"
)

// peer is one remote host as the packet path sees it.
type peer struct {
	subnet   netip.Prefix
	publicIP netip.Addr
	// dst is the peer's UDP address (PublicIP and the backend's port).
	dst netip.AddrPort
}

// table is the forwarding state the packet path reads: longest-prefix match
// of an inner destination to a peer, and the set of peer addresses datagrams
// may come from. A table is immutable once built; Reconcile swaps in a new
// one atomically, so the packet path never takes a lock.
type table struct {
	// own is this host's subnet (inner destinations accepted from peers).
	own netip.Prefix
	// own32 is own in the packet path's form; ownOK says whether own is set.
	own32 subnet32
	ownOK bool
	// network is the whole overlay network.
	network netip.Prefix
	peers   []peer
	// byLen holds, for each distinct prefix length (longest first), the
	// peers' masked subnet addresses mapped to their index in peers.
	byLen []lenTable
	// senders is the set of peers' PublicIPs.
	senders map[uint32]struct{}
	// port is the UDP port peers send from and to.
	port uint16
	// complete reports whether the table was built from the full list of
	// peers; before the first Reconcile it is not, and a destination
	// without a peer is dropped silently rather than answered with ICMP.
	complete bool
}

type lenTable struct {
	mask uint32
	nets map[uint32]int32
}

type subnet32 struct{ addr, mask uint32 }

func (s subnet32) contains(a uint32) bool { return a&s.mask == s.addr }

func maskOf(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func addr32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func prefix32(p netip.Prefix) subnet32 {
	m := maskOf(p.Bits())
	return subnet32{addr: addr32(p.Addr()) & m, mask: m}
}

// buildTable builds the forwarding table for own's host from peers, the
// current leases of the other hosts. Leases it cannot serve (another
// backend type, an IPv6 or out-of-network subnet, an overlap with this
// host's or an earlier peer's subnet, a missing PublicIP) are left out and
// reported, one error each; the table holds every other peer. Peer subnets
// may nest (a wide reservation holding a narrower lease): the longest prefix
// wins. Two leases of the same subnet conflict: the most recently written
// one is kept.
func buildTable(network, own netip.Prefix, ownIP netip.Addr, port uint16, peers []lease.Lease) (*table, []error) {
	t := &table{own: own.Masked(), network: network.Masked(), senders: make(map[uint32]struct{}), port: port}
	if own.IsValid() && own.Addr().Is4() {
		t.own32, t.ownOK = prefix32(own), true
	}
	var errs []error
	sorted := slices.Clone(peers)
	// Deterministic choice among conflicting leases: the most recently
	// written wins, as it is the one its owner is renewing.
	slices.SortStableFunc(sorted, func(a, b lease.Lease) int {
		if c := b.Subnet.Bits() - a.Subnet.Bits(); c != 0 {
			return c
		}
		if a.ModRevision != b.ModRevision {
			if a.ModRevision > b.ModRevision {
				return -1
			}
			return 1
		}
		return a.Subnet.Addr().Compare(b.Subnet.Addr())
	})
	for _, l := range sorted {
		if err := t.add(l, ownIP, port); err != nil {
			errs = append(errs, fmt.Errorf("lease %s: %w", lease.SubnetKey(l.Subnet), err))
		}
	}
	return t, errs
}

func (t *table) add(l lease.Lease, ownIP netip.Addr, port uint16) error {
	switch l.Attrs.BackendType {
	case "", Type:
	default:
		return fmt.Errorf("backend type %q is not udp", l.Attrs.BackendType)
	}
	sn := l.Subnet
	if !sn.IsValid() || !sn.Addr().Is4() {
		return fmt.Errorf("subnet %s is not an IPv4 prefix", sn)
	}
	if sn.Masked() != sn {
		return fmt.Errorf("subnet %s has host bits set", sn)
	}
	if t.network.IsValid() && (sn.Bits() < t.network.Bits() || !t.network.Contains(sn.Addr())) {
		return fmt.Errorf("subnet %s is outside the network %s", sn, t.network)
	}
	if t.own.IsValid() && t.own.Overlaps(sn) {
		return fmt.Errorf("subnet %s overlaps this host's subnet %s", sn, t.own)
	}
	ip := l.Attrs.PublicIP
	if !ip.IsValid() || !ip.Is4() || !unicastAddr(addr32(ip)) {
		return fmt.Errorf("PublicIP %q is not a unicast IPv4 address", ip)
	}
	if ip == ownIP {
		return fmt.Errorf("PublicIP %s is this host's own address", ip)
	}
	s := prefix32(sn)
	var lt *lenTable
	for i := range t.byLen {
		if t.byLen[i].mask == s.mask {
			lt = &t.byLen[i]
			break
		}
	}
	if lt != nil {
		if j, dup := lt.nets[s.addr]; dup {
			return fmt.Errorf("subnet %s is also leased to %s by a newer lease; ignoring this one", sn, t.peers[j].publicIP)
		}
	}
	idx := int32(len(t.peers))
	t.peers = append(t.peers, peer{subnet: sn, publicIP: ip, dst: netip.AddrPortFrom(ip, port)})
	if lt == nil {
		// Peers arrive longest prefix first, so appending keeps byLen
		// ordered longest first.
		t.byLen = append(t.byLen, lenTable{mask: s.mask, nets: make(map[uint32]int32)})
		lt = &t.byLen[len(t.byLen)-1]
	}
	lt.nets[s.addr] = idx
	t.senders[addr32(ip)] = struct{}{}
	return nil
}

// leases returns the table's peers as leases (for rebuilding the table
// under another own subnet).
func (t *table) leases() []lease.Lease {
	ls := make([]lease.Lease, 0, len(t.peers))
	for _, p := range t.peers {
		ls = append(ls, lease.Lease{Subnet: p.subnet, Attrs: lease.Attrs{PublicIP: p.publicIP}})
	}
	return ls
}

// lookup returns the index in t.peers of the peer whose subnet holds dst
// (longest prefix first), or -1.
func (t *table) lookup(dst uint32) int {
	for i := range t.byLen {
		lt := &t.byLen[i]
		if idx, ok := lt.nets[dst&lt.mask]; ok {
			return int(idx)
		}
	}
	return -1
}

// checkInbound decides about pkt, a datagram's payload that arrived from
// sender:port: it must come from a current peer's address and from the
// backend's port (a peer sends from the socket it listens on; a pod on the
// peer whose traffic is masqueraded to the peer's address does not), be a
// well-formed IPv4 packet,
// carry an inner source that routes back to that peer (the longest match of
// the source is one of the peer's subnets) and an inner destination inside
// this host's subnet.
func (t *table) checkInbound(pkt []byte, sender uint32, port uint16) verdict {
	if _, ok := t.senders[sender]; !ok {
		return verdictUnknownSender
	}
	if port != t.port {
		return verdictSenderPort
	}
	if v := checkIPv4(pkt); v != verdictForward {
		return v
	}
	if !t.ownOK || !t.own32.contains(dstOf(pkt)) {
		return verdictInnerDst
	}
	if i := t.lookup(srcOf(pkt)); i < 0 || addr32(t.peers[i].publicIP) != sender {
		return verdictInnerSrc
	}
	return verdictForward
}
