package udp

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// ipv4Packet builds a well-formed IPv4 packet of protocol proto with
// payload from src to dst.
func ipv4Packet(src, dst string, ttl, proto uint8, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	p[8] = ttl
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20], 0))
	copy(p[20:], payload)
	return p
}

func TestCheckIPv4(t *testing.T) {
	good := ipv4Packet("10.244.1.2", "10.244.2.3", 64, 17, make([]byte, 12))
	mod := func(f func(p []byte) []byte) []byte {
		p := append([]byte(nil), good...)
		return f(p)
	}
	fixSum := func(p []byte) []byte {
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20], 0))
		return p
	}
	cases := []struct {
		name string
		pkt  []byte
		want verdict
	}{
		{"good", good, verdictForward},
		{"empty", nil, verdictShort},
		{"19 bytes", good[:19], verdictShort},
		{"IPv6", mod(func(p []byte) []byte { p[0] = 0x65; return p }), verdictVersion},
		{"IHL 4", mod(func(p []byte) []byte { p[0] = 0x44; return fixSum(p) }), verdictHeader},
		{"IHL beyond packet", mod(func(p []byte) []byte { p[0] = 0x4f; return p }), verdictHeader},
		{"truncated", good[:len(good)-1], verdictLength},
		{"padded", append(append([]byte(nil), good...), 0), verdictLength},
		{"total length too large", mod(func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:], 1000); return fixSum(p) }), verdictLength},
		{"bad checksum", mod(func(p []byte) []byte { p[10] ^= 1; return p }), verdictChecksum},
		{"TTL 0", mod(func(p []byte) []byte { p[8] = 0; return fixSum(p) }), verdictTTL},
		{"TTL 1", mod(func(p []byte) []byte { p[8] = 1; return fixSum(p) }), verdictForward},
	}
	for _, c := range cases {
		if got := checkIPv4(c.pkt); got != c.want {
			t.Errorf("%s: checkIPv4 = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestICMPError(t *testing.T) {
	orig := ipv4Packet("10.244.1.2", "10.244.9.9", 63, 6, make([]byte, 1400))
	out := make([]byte, icmpMaxLen)
	n := buildICMPError(out, orig, addr32(netip.MustParseAddr("10.244.1.0")), icmpDestUnreachable, icmpCodeNetUnreach)
	if n != icmpMaxLen {
		t.Fatalf("ICMP error of %d bytes, want %d (quote cut at 576)", n, icmpMaxLen)
	}
	pkt := out[:n]
	if v := checkIPv4(pkt); v != verdictForward {
		t.Fatalf("ICMP error's IPv4 header: %v", v)
	}
	if got := netip.AddrFrom4([4]byte(pkt[16:20])); got != netip.MustParseAddr("10.244.1.2") {
		t.Errorf("ICMP error sent to %s, want the original source", got)
	}
	if pkt[9] != protoICMP || pkt[20] != 3 || pkt[21] != 0 {
		t.Errorf("protocol %d type %d code %d, want 1/3/0", pkt[9], pkt[20], pkt[21])
	}
	if ipChecksum(pkt[20:], 0) != 0 {
		t.Error("ICMP checksum invalid")
	}
	if string(pkt[28:48]) != string(orig[:20]) {
		t.Error("ICMP error does not quote the original header")
	}
	// A short original is quoted whole.
	small := ipv4Packet("10.244.1.2", "10.244.9.9", 63, 17, make([]byte, 8))
	if n := buildICMPError(out, small, 1, 3, 0); n != 20+8+len(small) {
		t.Errorf("ICMP error about a %d-byte packet is %d bytes, want %d", len(small), n, 28+len(small))
	}
}

func TestICMPErrorAllowed(t *testing.T) {
	echo := []byte{8, 0, 0, 0, 0, 0, 0, 0}
	unreach := []byte{3, 1, 0, 0, 0, 0, 0, 0}
	frag := ipv4Packet("10.244.1.2", "10.244.9.9", 63, 17, make([]byte, 8))
	binary.BigEndian.PutUint16(frag[6:], 0x0010) // offset 16*8
	cases := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"udp", ipv4Packet("10.244.1.2", "10.244.9.9", 63, 17, make([]byte, 8)), true},
		{"echo request", ipv4Packet("10.244.1.2", "10.244.9.9", 63, 1, echo), true},
		{"ICMP error", ipv4Packet("10.244.1.2", "10.244.9.9", 63, 1, unreach), false},
		{"ICMP without header", ipv4Packet("10.244.1.2", "10.244.9.9", 63, 1, nil), false},
		{"non-first fragment", frag, false},
		{"multicast destination", ipv4Packet("10.244.1.2", "239.1.1.1", 63, 17, nil), false},
		{"broadcast destination", ipv4Packet("10.244.1.2", "255.255.255.255", 63, 17, nil), false},
		{"zero source", ipv4Packet("0.0.0.0", "10.244.9.9", 63, 17, nil), false},
		{"loopback source", ipv4Packet("127.0.0.1", "10.244.9.9", 63, 17, nil), false},
	}
	for _, c := range cases {
		if got := icmpErrorAllowed(c.pkt); got != c.want {
			t.Errorf("%s: icmpErrorAllowed = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := limiter{rate: 10, burst: 3}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	allowed := 0
	for range 10 {
		if l.allow(t0) {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("burst: %d allowed, want 3", allowed)
	}
	if !l.allow(t0.Add(100e6)) { // 100 ms later: one token back
		t.Error("no token after 100 ms at 10/s")
	}
	if l.allow(t0.Add(100e6)) {
		t.Error("second token after 100 ms at 10/s")
	}
}
