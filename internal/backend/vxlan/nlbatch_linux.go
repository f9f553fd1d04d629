package vxlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/routes"
)

// batcher writes rtnetlink requests in batches: many requests per sendmsg
// on one socket, then one pass over their acknowledgements. Programming
// thousands of peers one request and one reply at a time costs a syscall
// pair and a 64 KiB receive buffer per entry; batched, the kernel's own
// work is what remains.
type batcher struct {
	fd      int
	seq     uint32
	buf     []byte
	what    map[uint32]string // seq → description, for errors
	errs    []error
	sent    int
	rcv     []byte
	maxSize int
}

const (
	batchBytes = 32 << 10 // per sendmsg; well below the socket's send buffer
	batchCount = 512      // acks per round trip; well below the receive buffer
)

// newBatcher opens a NETLINK_ROUTE socket in ns.
func newBatcher(ns netns.NsHandle) (*batcher, error) {
	b := &batcher{what: map[uint32]string{}, rcv: make([]byte, 256<<10), maxSize: batchBytes}
	err := inNS(ns, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		b.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Acks carry only the failed request's header, and the receive buffer
	// holds a full batch of them.
	_ = unix.SetsockoptInt(b.fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if err := unix.SetsockoptInt(b.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
		_ = unix.SetsockoptInt(b.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	if err := unix.Bind(b.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(b.fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	return b, nil
}

func (b *batcher) close() { unix.Close(b.fd) }

// add queues one request; body is the message after the netlink header.
func (b *batcher) add(typ, flags uint16, body []byte, what string) {
	if len(b.buf)+unix.NLMSG_HDRLEN+len(body) > b.maxSize || len(b.what) >= batchCount {
		b.flush()
	}
	b.seq++
	var h [unix.NLMSG_HDRLEN]byte
	binary.NativeEndian.PutUint32(h[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:], b.seq)
	b.buf = append(b.buf, h[:]...)
	b.buf = append(b.buf, body...)
	b.what[b.seq] = what
}

// flush sends the queued requests and waits for every acknowledgement.
func (b *batcher) flush() {
	if len(b.what) == 0 {
		return
	}
	defer func() { b.buf = b.buf[:0]; clear(b.what) }()
	if err := unix.Sendto(b.fd, b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		b.errs = append(b.errs, fmt.Errorf("netlink send of %d requests: %w", len(b.what), err))
		return
	}
	b.sent += len(b.what)
	for len(b.what) > 0 {
		n, _, err := unix.Recvfrom(b.fd, b.rcv, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("netlink receive (%d requests unacknowledged): %w", len(b.what), err))
			return
		}
		for buf := b.rcv[:n]; len(buf) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(buf[0:]))
			typ := binary.NativeEndian.Uint16(buf[4:])
			seq := binary.NativeEndian.Uint32(buf[8:])
			if l < unix.NLMSG_HDRLEN || l > len(buf) {
				b.errs = append(b.errs, fmt.Errorf("netlink: malformed reply of %d bytes", l))
				return
			}
			data := buf[unix.NLMSG_HDRLEN:l]
			if al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); al < len(buf) {
				buf = buf[al:]
			} else {
				buf = nil
			}
			what, ok := b.what[seq]
			if !ok || typ != unix.NLMSG_ERROR {
				continue
			}
			delete(b.what, seq)
			if len(data) < 4 {
				continue
			}
			if e := int32(binary.NativeEndian.Uint32(data[:4])); e != 0 {
				b.errs = append(b.errs, fmt.Errorf("%s: %w", what, unix.Errno(-e)))
			}
		}
	}
}

// done flushes and returns the failures joined, resetting them.
func (b *batcher) done() error {
	b.flush()
	err := errors.Join(b.errs...)
	b.errs = nil
	return err
}

// attr appends a netlink attribute.
func attr(buf []byte, typ uint16, data []byte) []byte {
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	buf = append(buf, h[:]...)
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	return buf
}

func u32(v uint32) []byte {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return b[:]
}

// ndmsg builds a neighbour message body (struct ndmsg and attributes).
func ndmsg(family uint8, idx int, state uint16, flags uint8, ip netip.Addr, mac hwAddr, withMAC bool) []byte {
	b := make([]byte, 12, 40)
	b[0] = family
	binary.NativeEndian.PutUint32(b[4:], uint32(idx))
	binary.NativeEndian.PutUint16(b[8:], state)
	b[10] = flags
	if family == unix.AF_INET {
		b[11] = unix.RTN_UNICAST
	}
	if ip.IsValid() {
		b = attr(b, unix.NDA_DST, ip.AsSlice())
	}
	if withMAC {
		b = attr(b, unix.NDA_LLADDR, mac[:])
	}
	return b
}

const replaceFlags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE

// setFDB queues "bridge fdb replace mac dev idx dst ip self <state>".
func (b *batcher) setFDB(idx int, mac hwAddr, dst netip.Addr, state uint16) {
	b.add(unix.RTM_NEWNEIGH, replaceFlags, ndmsg(unix.AF_BRIDGE, idx, state, unix.NTF_SELF, dst, mac, true),
		fmt.Sprintf("FDB entry %s → %s", mac, dst))
}

// delFDB queues the removal of one FDB destination.
func (b *batcher) delFDB(idx int, mac hwAddr, dst netip.Addr) {
	b.add(unix.RTM_DELNEIGH, 0, ndmsg(unix.AF_BRIDGE, idx, 0, unix.NTF_SELF, dst, mac, true),
		fmt.Sprintf("remove FDB entry %s → %s", mac, dst))
}

// setNeigh queues "ip neigh replace ip lladdr mac dev idx nud <state>".
func (b *batcher) setNeigh(idx int, ip netip.Addr, mac hwAddr, state uint16) {
	b.add(unix.RTM_NEWNEIGH, replaceFlags, ndmsg(unix.AF_INET, idx, state, 0, ip, mac, true),
		fmt.Sprintf("neighbour %s → %s", ip, mac))
}

// delNeigh queues the removal of a neighbour.
func (b *batcher) delNeigh(idx int, ip netip.Addr) {
	b.add(unix.RTM_DELNEIGH, 0, ndmsg(unix.AF_INET, idx, 0, 0, ip, hwAddr{}, false),
		fmt.Sprintf("remove neighbour %s", ip))
}

// addRoute queues a Weft route (protocol 87, main table) with a metric.
func (b *batcher) addRoute(r routes.Route, metric uint32) {
	m := make([]byte, 12, 48)
	m[0] = unix.AF_INET
	m[1] = byte(r.Dst.Bits())
	m[4] = unix.RT_TABLE_MAIN
	m[5] = byte(routes.Protocol)
	m[6] = unix.RT_SCOPE_UNIVERSE
	m[7] = unix.RTN_UNICAST
	if !r.Gw.IsValid() {
		m[6] = unix.RT_SCOPE_LINK
	}
	if r.OnLink {
		binary.NativeEndian.PutUint32(m[8:], unix.RTNH_F_ONLINK)
	}
	m = attr(m, unix.RTA_DST, r.Dst.Addr().AsSlice())
	m = attr(m, unix.RTA_OIF, u32(uint32(r.LinkIndex)))
	if r.Gw.IsValid() {
		m = attr(m, unix.RTA_GATEWAY, r.Gw.AsSlice())
	}
	m = attr(m, unix.RTA_PRIORITY, u32(metric))
	b.add(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, m, "route "+r.String())
}

// routeMetric spreads Weft's gateway routes over many metrics. The kernel
// hashes a route's next-hop information (fib_info) by protocol, scope,
// preferred source, metric and device, but not by gateway: thousands of
// routes through one device with distinct gateways share one hash chain and
// every insert walks it (5000 peers: 80 µs a route instead of 12). The
// metric is the one free key; it is derived from the destination, so it is
// stable, and it changes nothing for lookups (Weft's destinations never
// overlap each other).
func routeMetric(dst netip.Prefix) uint32 {
	h := fnv.New32a()
	a := dst.Addr().As4()
	h.Write(a[:])
	h.Write([]byte{byte(dst.Bits())})
	return 1 + h.Sum32()%4093
}
