package udp

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

func udpLease(subnet, ip string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip)}}
}

var (
	testNet   = netip.MustParsePrefix("10.244.0.0/16")
	testOwn   = netip.MustParsePrefix("10.244.1.0/24")
	testOwnIP = netip.MustParseAddr("198.18.0.11")
)

func a32(s string) uint32 { return addr32(netip.MustParseAddr(s)) }

func TestTableLookup(t *testing.T) {
	peers := []lease.Lease{
		udpLease("10.244.2.0/24", "198.18.0.12"),
		udpLease("10.244.3.0/24", "198.18.0.13"),
		udpLease("10.244.64.0/18", "198.18.0.14"), // a wider reservation
		udpLease("10.244.65.0/24", "198.18.0.15"), // inside it: the longer prefix wins
	}
	peers[1].Attrs.BackendType = "udp"
	tbl, errs := buildTable(testNet, testOwn, testOwnIP, 8285, peers)
	if len(errs) != 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	for dst, want := range map[string]string{
		"10.244.2.7":   "198.18.0.12",
		"10.244.3.255": "198.18.0.13",
		"10.244.64.1":  "198.18.0.14",
		"10.244.127.9": "198.18.0.14",
		"10.244.65.3":  "198.18.0.15",
		"10.244.1.5":   "",
		"10.244.4.1":   "",
		"10.245.2.7":   "",
	} {
		got := ""
		if i := tbl.lookup(a32(dst)); i >= 0 {
			got = tbl.peers[i].publicIP.String()
			if tbl.peers[i].dst.Port() != 8285 {
				t.Errorf("peer %s port %d", got, tbl.peers[i].dst.Port())
			}
		}
		if got != want {
			t.Errorf("lookup(%s) = %q, want %q", dst, got, want)
		}
	}
}

func TestTableRefusesBadLeases(t *testing.T) {
	vx := udpLease("10.244.9.0/24", "198.18.0.19")
	vx.Attrs.BackendType = "vxlan"
	cases := []struct {
		l    lease.Lease
		want string
	}{
		{vx, "not udp"},
		{udpLease("10.245.0.0/24", "198.18.0.20"), "outside the network"},
		{udpLease("10.0.0.0/8", "198.18.0.20"), "outside the network"},
		{udpLease("10.244.1.0/24", "198.18.0.20"), "overlaps this host's subnet"},
		{udpLease("10.244.0.0/23", "198.18.0.20"), "overlaps this host's subnet"},
		{udpLease("10.244.5.0/24", "198.18.0.11"), "this host's own address"},
		{udpLease("10.244.5.0/24", "224.0.0.1"), "not a unicast"},
		{lease.Lease{Subnet: netip.MustParsePrefix("fd00::/64"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.18.0.20")}}, "not an IPv4 prefix"},
		{lease.Lease{Subnet: netip.MustParsePrefix("10.244.5.0/24")}, "PublicIP"},
	}
	for _, c := range cases {
		good := udpLease("10.244.2.0/24", "198.18.0.12")
		tbl, errs := buildTable(testNet, testOwn, testOwnIP, 8285, []lease.Lease{good, c.l})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), c.want) {
			t.Errorf("lease %v: errors %v, want one containing %q", c.l, errs, c.want)
		}
		if len(tbl.peers) != 1 || tbl.lookup(a32("10.244.2.1")) != 0 {
			t.Errorf("lease %v: the good peer is not served", c.l)
		}
	}
}

func TestTableConflictNewestWins(t *testing.T) {
	old := udpLease("10.244.2.0/24", "198.18.0.12")
	old.ModRevision = 5
	newer := udpLease("10.244.2.0/24", "198.18.0.22")
	newer.ModRevision = 9
	tbl, errs := buildTable(testNet, testOwn, testOwnIP, 8285, []lease.Lease{old, newer})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "newer lease") {
		t.Fatalf("errors %v, want one conflict", errs)
	}
	if i := tbl.lookup(a32("10.244.2.1")); i < 0 || tbl.peers[i].publicIP != newer.Attrs.PublicIP {
		t.Fatalf("lookup picked %v, want the newer lease's peer", i)
	}
}

func TestCheckInbound(t *testing.T) {
	peers := []lease.Lease{
		udpLease("10.244.2.0/24", "198.18.0.12"),
		udpLease("10.244.3.0/24", "198.18.0.12"), // a restarted host's second lease
		udpLease("10.244.4.0/24", "198.18.0.14"),
		udpLease("10.244.64.0/18", "198.18.0.14"),
		udpLease("10.244.65.0/24", "198.18.0.15"),
	}
	tbl, _ := buildTable(testNet, testOwn, testOwnIP, 8285, peers)
	cases := []struct {
		name   string
		pkt    []byte
		sender string
		want   verdict
		port   uint16
	}{
		{"peer to pod", ipv4Packet("10.244.2.5", "10.244.1.7", 63, 6, make([]byte, 20)), "198.18.0.12", verdictForward, 0},
		{"second subnet", ipv4Packet("10.244.3.5", "10.244.1.7", 63, 6, nil), "198.18.0.12", verdictForward, 0},
		{"peer's TUN address", ipv4Packet("10.244.4.0", "10.244.1.0", 64, 1, nil), "198.18.0.14", verdictForward, 0},
		{"not a peer", ipv4Packet("10.244.2.5", "10.244.1.7", 63, 6, nil), "198.19.0.66", verdictUnknownSender, 0},
		{"own address", ipv4Packet("10.244.2.5", "10.244.1.7", 63, 6, nil), "198.18.0.11", verdictUnknownSender, 0},
		{"inner source of another peer", ipv4Packet("10.244.4.5", "10.244.1.7", 63, 6, nil), "198.18.0.12", verdictInnerSrc, 0},
		{"inner source outside", ipv4Packet("8.8.8.8", "10.244.1.7", 63, 6, nil), "198.18.0.12", verdictInnerSrc, 0},
		{"inner destination elsewhere", ipv4Packet("10.244.2.5", "198.18.0.11", 63, 6, nil), "198.18.0.12", verdictInnerDst, 0},
		{"inner destination of another peer", ipv4Packet("10.244.2.5", "10.244.4.1", 63, 6, nil), "198.18.0.12", verdictInnerDst, 0},
		{"source in a nested subnet of another peer", ipv4Packet("10.244.65.5", "10.244.1.7", 63, 6, nil), "198.18.0.14", verdictInnerSrc, 0},
		{"source in the wide reservation", ipv4Packet("10.244.66.5", "10.244.1.7", 63, 6, nil), "198.18.0.14", verdictForward, 0},
		{"garbage", []byte{1, 2, 3}, "198.18.0.12", verdictShort, 0},
	}
	cases = append(cases, struct {
		name   string
		pkt    []byte
		sender string
		want   verdict
		port   uint16
	}{"peer's address, another port", cases[0].pkt, "198.18.0.12", verdictSenderPort, 40000})
	for _, c := range cases {
		if c.port == 0 {
			c.port = 8285
		}
		if got := tbl.checkInbound(c.pkt, a32(c.sender), c.port); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// linearLookup is the obvious longest-prefix match, to check lookup.
func linearLookup(tbl *table, dst uint32) int {
	best, bestBits := -1, -1
	for i, p := range tbl.peers {
		s := prefix32(p.subnet)
		if s.contains(dst) && p.subnet.Bits() > bestBits {
			best, bestBits = i, p.subnet.Bits()
		}
	}
	return best
}

// FuzzTable builds forwarding tables from arbitrary leases and checks that
// building never panics, that every accepted peer lies in the network and
// overlaps neither this host nor another peer, and that lookup agrees with
// a linear longest-prefix match.
func FuzzTable(f *testing.F) {
	f.Add([]byte{10, 244, 2, 0, 24, 198, 18, 0, 12, 0}, uint32(0x0af40205))
	f.Add([]byte{10, 244, 64, 0, 18, 198, 18, 0, 14, 1, 10, 244, 65, 0, 24, 198, 18, 0, 15, 0}, uint32(0x0af44101))
	f.Fuzz(func(t *testing.T, data []byte, dst uint32) {
		var peers []lease.Lease
		for len(data) >= 10 {
			bits := int(data[4]) % 33
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte(data[0:4])), bits)
			ip := netip.AddrFrom4([4]byte(data[5:9]))
			bt := []string{"", "udp", "vxlan", "host-gw"}[data[9]%4]
			peers = append(peers, lease.Lease{Subnet: p, Attrs: lease.Attrs{PublicIP: ip, BackendType: bt}, ModRevision: int64(data[9])})
			data = data[10:]
		}
		tbl, _ := buildTable(testNet, testOwn, testOwnIP, 8285, peers)
		for i, p := range tbl.peers {
			if !testNet.Contains(p.subnet.Addr()) || p.subnet.Bits() < testNet.Bits() || p.subnet.Overlaps(testOwn) {
				t.Fatalf("accepted peer %v outside the network or overlapping ours", p)
			}
			for j := range i {
				if tbl.peers[j].subnet == p.subnet {
					t.Fatalf("accepted one subnet twice: %v and %v", tbl.peers[j], p)
				}
			}
		}
		if got, want := tbl.lookup(dst), linearLookup(tbl, dst); got != want {
			t.Fatalf("lookup(%08x) = %d, linear match %d", dst, got, want)
		}
		var pkt [20]byte
		binary.BigEndian.PutUint32(pkt[16:], dst)
		_ = tbl.checkInbound(pkt[:], dst, uint16(dst))
	})
}

// FuzzDecap feeds arbitrary datagrams from a peer and from a stranger
// through the receive checks: no panic, and a datagram that passes is a
// well-formed IPv4 packet of exactly its length, from the peer's subnet to
// this host's subnet.
func FuzzDecap(f *testing.F) {
	f.Add(ipv4Packet("10.244.129.5", "10.244.1.7", 63, 6, make([]byte, 20)), true)
	f.Add(ipv4Packet("10.244.130.5", "10.244.1.7", 63, 6, make([]byte, 20)), true)
	f.Add(ipv4Packet("10.244.2.5", "10.244.1.7", 0, 6, nil), true)
	f.Add(ipv4Packet("10.244.2.5", "10.244.9.7", 63, 17, nil), false)
	f.Add([]byte{0x45, 0, 0, 20}, true)
	f.Add([]byte{0x4f, 0, 0, 60, 0, 0, 0, 0, 64, 6}, true)
	peers := []lease.Lease{udpLease("10.244.128.0/17", "198.18.0.12"), udpLease("10.244.130.0/24", "198.18.0.13")}
	tbl, errs := buildTable(testNet, testOwn, testOwnIP, 8285, peers)
	if len(errs) > 0 || len(tbl.peers) != 2 {
		f.Fatalf("test table: %v", errs)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, fromPeer bool) {
		sender := a32("198.19.0.66")
		if fromPeer {
			sender = a32("198.18.0.12")
		}
		v := tbl.checkInbound(pkt, sender, 8285)
		if v != verdictForward {
			if out := make([]byte, icmpMaxLen); len(pkt) >= 20 && checkIPv4(pkt) == verdictForward && icmpErrorAllowed(pkt) {
				n := buildICMPError(out, pkt, 1, 3, 0)
				if checkIPv4(out[:n]) != verdictForward {
					t.Fatalf("ICMP error about %x is malformed", pkt)
				}
			}
			return
		}
		if !fromPeer {
			t.Fatal("accepted a datagram from a stranger")
		}
		if int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) || pkt[0]>>4 != 4 || pkt[8] == 0 {
			t.Fatalf("accepted malformed packet %x", pkt)
		}
		if !testOwn.Contains(netip.AddrFrom4([4]byte(pkt[16:20]))) || !peers[0].Subnet.Contains(netip.AddrFrom4([4]byte(pkt[12:16]))) || peers[1].Subnet.Contains(netip.AddrFrom4([4]byte(pkt[12:16]))) {
			t.Fatalf("accepted packet with foreign addresses %x", pkt)
		}
	})
}

func BenchmarkLookup(b *testing.B) {
	var peers []lease.Lease
	for i := 2; i < 250; i++ {
		peers = append(peers, udpLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24).String(), netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}).String()))
	}
	tbl, _ := buildTable(testNet, testOwn, testOwnIP, 8285, peers)
	dsts := []uint32{a32("10.244.7.9"), a32("10.244.200.1"), a32("10.244.99.3"), a32("10.244.251.1")}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tbl.lookup(dsts[i&3])
	}
}

func BenchmarkCheckInbound(b *testing.B) {
	tbl, _ := buildTable(testNet, testOwn, testOwnIP, 8285, []lease.Lease{udpLease("10.244.2.0/24", "198.18.0.12")})
	pkt := ipv4Packet("10.244.2.5", "10.244.1.7", 63, 6, make([]byte, 1400))
	sender := a32("198.18.0.12")
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if tbl.checkInbound(pkt, sender, 8285) != verdictForward {
			b.Fatal("refused")
		}
	}
}

// BenchmarkCopyPacket is the baseline for the per-packet benchmarks: one
// copy of a full-sized inner packet, the least any userspace datapath
// spends on a packet.
func BenchmarkCopyPacket(b *testing.B) {
	src := ipv4Packet("10.244.2.5", "10.244.1.7", 63, 6, make([]byte, 1452))
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		copy(dst, src)
	}
}
