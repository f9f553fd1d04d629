package vxlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnsutil"
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
	what    map[uint32]reqDesc // seq → what the request does, for errors
	errs    []error
	sent    int
	rcv     []byte
	maxSize int
}

const (
	batchBytes = 32 << 10 // per sendmsg; well below the socket's send buffer
	batchCount = 512      // acks per round trip; well below the receive buffer
)

// newBatcher opens a NETLINK_ROUTE socket in ns; rcv is its receive buffer
// (nil: a new one).
func newBatcher(ns netns.NsHandle, rcv []byte) (*batcher, error) {
	if len(rcv) == 0 {
		rcv = make([]byte, 256<<10)
	}
	b := &batcher{what: map[uint32]reqDesc{}, rcv: rcv, maxSize: batchBytes}
	err := netnsutil.Do(ns, func() error {
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

// reqDesc says what a request does; it is turned into text only for an
// error, so a batch of thousands of requests allocates no strings.
type reqDesc struct {
	op    string // "FDB entry", "remove neighbour", ...
	ip    netip.Addr
	mac   hwAddr
	route routes.Route
}

func (d reqDesc) String() string {
	switch {
	case d.route.Dst.IsValid():
		return d.op + " " + d.route.String()
	case d.ip.IsValid() && !d.mac.isZero():
		return fmt.Sprintf("%s %s %s", d.op, d.ip, d.mac)
	case d.ip.IsValid():
		return d.op + " " + d.ip.String()
	}
	return d.op + " " + d.mac.String()
}

// begin starts a request of type typ in the batch and returns its offset;
// the caller appends the body to b.buf and calls end.
func (b *batcher) begin(typ, flags uint16, d reqDesc) int {
	if len(b.buf) > b.maxSize-256 || len(b.what) >= batchCount {
		b.flush()
	}
	b.seq++
	start := len(b.buf)
	var h [unix.NLMSG_HDRLEN]byte
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:], b.seq)
	b.buf = append(b.buf, h[:]...)
	b.what[b.seq] = d
	return start
}

// end sets the length of the request begun at start.
func (b *batcher) end(start int) {
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
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
				b.errs = append(b.errs, fmt.Errorf("%s: %w", what.String(), unix.Errno(-e)))
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

// appendNdmsg appends a neighbour message body (struct ndmsg and
// attributes).
func appendNdmsg(b []byte, family uint8, idx int, state uint16, flags uint8, ip netip.Addr, mac *hwAddr) []byte {
	var m [12]byte
	m[0] = family
	binary.NativeEndian.PutUint32(m[4:], uint32(idx))
	binary.NativeEndian.PutUint16(m[8:], state)
	m[10] = flags
	if family == unix.AF_INET {
		m[11] = unix.RTN_UNICAST
	}
	b = append(b, m[:]...)
	if ip.IsValid() {
		a := ip.As4()
		b = attr(b, unix.NDA_DST, a[:])
	}
	if mac != nil {
		b = attr(b, unix.NDA_LLADDR, mac[:])
	}
	return b
}

const replaceFlags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE

// setFDB queues "bridge fdb replace mac dev idx dst ip self <state>".
func (b *batcher) setFDB(idx int, mac hwAddr, dst netip.Addr, state uint16) {
	s := b.begin(unix.RTM_NEWNEIGH, replaceFlags, reqDesc{op: "FDB entry", ip: dst, mac: mac})
	b.buf = appendNdmsg(b.buf, unix.AF_BRIDGE, idx, state, unix.NTF_SELF, dst, &mac)
	b.end(s)
}

// delFDB queues the removal of one FDB destination.
func (b *batcher) delFDB(idx int, mac hwAddr, dst netip.Addr) {
	s := b.begin(unix.RTM_DELNEIGH, 0, reqDesc{op: "remove FDB entry", ip: dst, mac: mac})
	b.buf = appendNdmsg(b.buf, unix.AF_BRIDGE, idx, 0, unix.NTF_SELF, dst, &mac)
	b.end(s)
}

// setNeigh queues "ip neigh replace ip lladdr mac dev idx nud <state>".
func (b *batcher) setNeigh(idx int, ip netip.Addr, mac hwAddr, state uint16) {
	s := b.begin(unix.RTM_NEWNEIGH, replaceFlags, reqDesc{op: "neighbour", ip: ip, mac: mac})
	b.buf = appendNdmsg(b.buf, unix.AF_INET, idx, state, 0, ip, &mac)
	b.end(s)
}

// delNeigh queues the removal of a neighbour.
func (b *batcher) delNeigh(idx int, ip netip.Addr) {
	s := b.begin(unix.RTM_DELNEIGH, 0, reqDesc{op: "remove neighbour", ip: ip})
	b.buf = appendNdmsg(b.buf, unix.AF_INET, idx, 0, 0, ip, nil)
	b.end(s)
}

// addRoute queues a Weft route (protocol 87, main table) with a metric.
func (b *batcher) addRoute(r routes.Route, metric uint32) {
	s := b.begin(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, reqDesc{op: "route", route: r})
	var m [12]byte
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
	b.buf = append(b.buf, m[:]...)
	dst := r.Dst.Addr().As4()
	b.buf = attr(b.buf, unix.RTA_DST, dst[:])
	b.buf = attr(b.buf, unix.RTA_OIF, u32(uint32(r.LinkIndex)))
	if r.Gw.IsValid() {
		gw := r.Gw.As4()
		b.buf = attr(b.buf, unix.RTA_GATEWAY, gw[:])
	}
	b.buf = attr(b.buf, unix.RTA_PRIORITY, u32(metric))
	b.end(s)
}

// delRoute queues the removal of one of Weft's routes, identified by its
// destination and metric.
func (b *batcher) delRoute(dst netip.Prefix, metric uint32) {
	s := b.begin(unix.RTM_DELROUTE, 0, reqDesc{op: "remove route", route: routes.Route{Dst: dst}})
	var m [12]byte
	m[0] = unix.AF_INET
	m[1] = byte(dst.Bits())
	m[4] = unix.RT_TABLE_MAIN
	m[5] = byte(routes.Protocol)
	m[6] = unix.RT_SCOPE_NOWHERE
	b.buf = append(b.buf, m[:]...)
	a := dst.Addr().As4()
	b.buf = attr(b.buf, unix.RTA_DST, a[:])
	b.buf = attr(b.buf, unix.RTA_PRIORITY, u32(metric))
	b.end(s)
}
