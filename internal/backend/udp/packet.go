package udp

import (
	"encoding/binary"
)

// IPv4 header offsets used by the packet path.
const (
	ipv4MinHeaderLen = 20
	offTotalLen      = 2
	offFragment      = 6
	offTTL           = 8
	offProtocol      = 9
	offChecksum      = 10
	offSrc           = 12
	offDst           = 16

	protoICMP = 1
)

// verdict is what the packet path decides about one packet.
type verdict uint8

const (
	// verdictForward: the packet goes on (to a peer, or into the TUN).
	verdictForward verdict = iota
	// verdictShort: fewer bytes than an IPv4 header.
	verdictShort
	// verdictVersion: not IPv4.
	verdictVersion
	// verdictHeader: header length below 20 bytes or beyond the packet.
	verdictHeader
	// verdictLength: the header's total length differs from the datagram's.
	verdictLength
	// verdictChecksum: the IPv4 header checksum is wrong.
	verdictChecksum
	// verdictTTL: TTL 0, which no router emits.
	verdictTTL
	// verdictInnerDst: the inner destination is not in this host's subnet.
	verdictInnerDst
	// verdictInnerSrc: the inner source is not in the sending peer's subnet.
	verdictInnerSrc
	// verdictNoPeer: no peer's subnet holds the destination.
	verdictNoPeer
	// verdictUnknownSender: the datagram's source is no current peer.
	verdictUnknownSender
	// verdictSenderPort: the datagram comes from a peer's address but not
	// from the backend's port (peers send from the port they listen on).
	verdictSenderPort
)

var verdictNames = [...]string{
	verdictForward:       "forward",
	verdictShort:         "short",
	verdictVersion:       "version",
	verdictHeader:        "header",
	verdictLength:        "length",
	verdictChecksum:      "checksum",
	verdictTTL:           "ttl",
	verdictInnerDst:      "inner-dst",
	verdictInnerSrc:      "inner-src",
	verdictNoPeer:        "no-peer",
	verdictUnknownSender: "unknown-sender",
	verdictSenderPort:    "sender-port",
}

func (v verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "unknown"
}

// checkIPv4 validates the IPv4 header of pkt, a whole packet: version 4, a
// header length that fits, a total length equal to len(pkt), a correct
// header checksum and a TTL above zero. It never reads beyond pkt.
func checkIPv4(pkt []byte) verdict {
	if len(pkt) < ipv4MinHeaderLen {
		return verdictShort
	}
	if pkt[0]>>4 != 4 {
		return verdictVersion
	}
	hl := int(pkt[0]&0x0f) * 4
	if hl < ipv4MinHeaderLen || hl > len(pkt) {
		return verdictHeader
	}
	if int(binary.BigEndian.Uint16(pkt[offTotalLen:])) != len(pkt) {
		return verdictLength
	}
	if ipChecksum(pkt[:hl], 0) != 0 {
		return verdictChecksum
	}
	if pkt[offTTL] == 0 {
		return verdictTTL
	}
	return verdictForward
}

// checkOutbound validates a packet read from the TUN device. The kernel
// wrote it, so only what the forwarding decision needs is checked: IPv4, a
// header that fits, a TTL above zero. Segments split from a TSO super-packet
// carry a freshly computed header, so the checksum is not re-verified here.
func checkOutbound(pkt []byte) verdict {
	if len(pkt) < ipv4MinHeaderLen {
		return verdictShort
	}
	if pkt[0]>>4 != 4 {
		return verdictVersion
	}
	hl := int(pkt[0]&0x0f) * 4
	if hl < ipv4MinHeaderLen || hl > len(pkt) {
		return verdictHeader
	}
	if int(binary.BigEndian.Uint16(pkt[offTotalLen:])) != len(pkt) {
		return verdictLength
	}
	if pkt[offTTL] == 0 {
		return verdictTTL
	}
	return verdictForward
}

func srcOf(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[offSrc:]) }
func dstOf(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[offDst:]) }

// ipChecksum folds the one's-complement sum of b (and initial) and returns
// its complement: 0 when b already holds a valid checksum.
func ipChecksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ICMP types and codes the packet path emits.
const (
	icmpDestUnreachable = 3
	icmpTimeExceeded    = 11
	icmpCodeNetUnreach  = 0
	// icmpMaxLen bounds an ICMP error packet, as RFC 1812 4.3.2.3 asks.
	icmpMaxLen = 576
)

// icmpErrorAllowed reports whether a router may answer orig (a packet whose
// IPv4 header was already checked) with an ICMP error, following RFC 1812
// 4.3.2.7: never about an ICMP error, a non-first fragment, or a packet
// from or to a multicast, broadcast, zero or loopback address.
func icmpErrorAllowed(orig []byte) bool {
	if binary.BigEndian.Uint16(orig[offFragment:])&0x1fff != 0 {
		return false
	}
	src, dst := srcOf(orig), dstOf(orig)
	if !unicastAddr(src) || !unicastAddr(dst) {
		return false
	}
	if orig[offProtocol] == protoICMP {
		hl := int(orig[0]&0x0f) * 4
		if len(orig) <= hl {
			return false
		}
		switch orig[hl] { // ICMP type
		case 0, 8, 13, 14, 15, 16, 17, 18: // queries and replies
		default:
			return false
		}
	}
	return true
}

func unicastAddr(a uint32) bool {
	switch {
	case a == 0, a == 0xffffffff:
		return false
	case a>>24 == 127: // loopback
		return false
	case a>>28 == 0xe: // multicast
		return false
	}
	return true
}

// buildICMPError writes into out an ICMP error of type typ and code about
// orig, sent from src to orig's source, and returns its length. out must
// hold icmpMaxLen bytes. It quotes as much of orig as fits.
func buildICMPError(out []byte, orig []byte, src uint32, typ, code uint8) int {
	quote := len(orig)
	if max := icmpMaxLen - ipv4MinHeaderLen - 8; quote > max {
		quote = max
	}
	n := ipv4MinHeaderLen + 8 + quote
	h := out[:ipv4MinHeaderLen]
	h[0] = 0x45
	h[1] = 0xc0 // DSCP CS6, as network control traffic
	binary.BigEndian.PutUint16(h[offTotalLen:], uint16(n))
	binary.BigEndian.PutUint16(h[4:], 0) // identification
	binary.BigEndian.PutUint16(h[offFragment:], 0)
	h[offTTL] = 64
	h[offProtocol] = protoICMP
	binary.BigEndian.PutUint16(h[offChecksum:], 0)
	binary.BigEndian.PutUint32(h[offSrc:], src)
	binary.BigEndian.PutUint32(h[offDst:], srcOf(orig))
	binary.BigEndian.PutUint16(h[offChecksum:], ipChecksum(h, 0))
	m := out[ipv4MinHeaderLen:n]
	m[0], m[1] = typ, code
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint32(m[4:], 0) // unused
	copy(m[8:], orig[:quote])
	binary.BigEndian.PutUint16(m[2:], ipChecksum(m, 0))
	return n
}
