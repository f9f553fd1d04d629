package vxlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// kentry is a neighbour or FDB entry as the kernel reports it, reduced to
// what the reconciler reads. A dump of 5000 entries decoded this way costs
// a few hundred kilobytes instead of tens of megabytes, which keeps weftd's
// memory flat at resync time.
type kentry struct {
	idx    int
	state  uint16
	ip     netip.Addr
	mac    hwAddr
	hasMAC bool   // a valid unicast link-layer address
	used   uint32 // clock ticks since last use
}

// dump sends a dump request and calls fn with the body of every reply of
// type want.
func (b *batcher) dump(typ uint16, body []byte, want uint16, fn func(data []byte)) error {
	b.flush()
	b.seq++
	seq := b.seq
	req := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(req[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	req = append(req, body...)
	if err := unix.Sendto(b.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink dump request: %w", err)
	}
	var interrupted bool
	for {
		n, _, err := unix.Recvfrom(b.fd, b.rcv, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink dump: %w", err)
		}
		for buf := b.rcv[:n]; len(buf) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(buf[0:]))
			mt := binary.NativeEndian.Uint16(buf[4:])
			flags := binary.NativeEndian.Uint16(buf[6:])
			mseq := binary.NativeEndian.Uint32(buf[8:])
			if l < unix.NLMSG_HDRLEN || l > len(buf) {
				return fmt.Errorf("netlink dump: malformed message of %d bytes", l)
			}
			data := buf[unix.NLMSG_HDRLEN:l]
			if al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); al < len(buf) {
				buf = buf[al:]
			} else {
				buf = nil
			}
			if mseq != seq {
				continue
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch mt {
			case unix.NLMSG_DONE:
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if len(data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(data)); e != 0 {
						return fmt.Errorf("netlink dump: %w", unix.Errno(-e))
					}
				}
				return nil
			case want:
				fn(data)
			}
		}
	}
}

// errDumpInterrupted says the table changed during a dump; the result may
// be incomplete, so the caller retries.
var errDumpInterrupted = errors.New("netlink dump interrupted by a concurrent change")

// attrs calls fn for each attribute in b.
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED, b[4:l])
		al := (l + 3) &^ 3
		if al >= len(b) {
			return
		}
		b = b[al:]
	}
}

// parseNeighMsg decodes the body of an RTM_NEWNEIGH message of family.
func parseNeighMsg(d []byte, family uint8) (kentry, bool) {
	if len(d) < 12 || d[0] != family {
		return kentry{}, false
	}
	e := kentry{idx: int(int32(binary.NativeEndian.Uint32(d[4:]))), state: binary.NativeEndian.Uint16(d[8:])}
	attrs(d[12:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			if a, ok := netip.AddrFromSlice(v); ok {
				e.ip = a.Unmap()
			}
		case unix.NDA_LLADDR:
			if m, err := toHwAddr(v); err == nil {
				e.mac, e.hasMAC = m, true
			}
		case unix.NDA_CACHEINFO:
			if len(v) >= 8 {
				e.used = binary.NativeEndian.Uint32(v[4:])
			}
		}
	})
	return e, true
}

// listEntries dumps the neighbour (AF_INET) or FDB (AF_BRIDGE) entries of
// device idx into out (reused), retrying a dump the kernel reports as
// interrupted.
func (b *batcher) listEntries(family uint8, idx int, out []kentry) ([]kentry, error) {
	var err error
	for try := 0; try < 3; try++ {
		out = out[:0]
		req := make([]byte, 12)
		req[0] = family
		err = b.dump(unix.RTM_GETNEIGH, req, unix.RTM_NEWNEIGH, func(d []byte) {
			if e, ok := parseNeighMsg(d, family); ok && e.idx == idx {
				out = append(out, e)
			}
		})
		if !errors.Is(err, errDumpInterrupted) {
			break
		}
	}
	return out, err
}

// kroute is a main-table IPv4 route as the kernel reports it, reduced to
// what the reconciler compares.
type kroute struct {
	proto  uint8
	typ    uint8
	gw     netip.Addr
	oif    int
	onlink bool
	metric uint32
}

// parseRouteMsg decodes the body of an RTM_NEWROUTE message; ok is false
// for routes outside the IPv4 main table or without a destination.
func parseRouteMsg(d []byte) (netip.Prefix, kroute, bool) {
	if len(d) < 12 || d[0] != unix.AF_INET || d[1] > 32 {
		return netip.Prefix{}, kroute{}, false
	}
	bits := int(d[1])
	table := uint32(d[4])
	r := kroute{proto: d[5], typ: d[7], onlink: binary.NativeEndian.Uint32(d[8:])&unix.RTNH_F_ONLINK != 0}
	var dst netip.Addr
	attrs(d[12:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_TABLE:
			if len(v) >= 4 {
				table = binary.NativeEndian.Uint32(v)
			}
		case unix.RTA_DST:
			if a, ok := netip.AddrFromSlice(v); ok {
				dst = a.Unmap()
			}
		case unix.RTA_GATEWAY:
			if a, ok := netip.AddrFromSlice(v); ok {
				r.gw = a.Unmap()
			}
		case unix.RTA_OIF:
			if len(v) >= 4 {
				r.oif = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) >= 4 {
				r.metric = binary.NativeEndian.Uint32(v)
			}
		case unix.RTA_MULTIPATH:
			r.oif = -1 // never one of Weft's
		}
	})
	if table != unix.RT_TABLE_MAIN || !dst.Is4() {
		return netip.Prefix{}, kroute{}, false
	}
	return netip.PrefixFrom(dst, bits), r, true
}

// routeDump holds the main table's IPv4 routes by destination: the first
// route of each in one, any further ones (other metrics) in more. Kept and
// reused across syncs.
type routeDump struct {
	one  map[netip.Prefix]kroute
	more map[netip.Prefix][]kroute
}

// each calls fn for every route to dst.
func (d *routeDump) each(dst netip.Prefix, fn func(kroute)) {
	if k, ok := d.one[dst]; ok {
		fn(k)
	}
	for _, k := range d.more[dst] {
		fn(k)
	}
}

// listMainRoutes fills d with every IPv4 route of the main table.
func (b *batcher) listMainRoutes(d *routeDump) error {
	var err error
	for try := 0; try < 3; try++ {
		clear(d.one)
		clear(d.more)
		req := make([]byte, 12)
		req[0] = unix.AF_INET
		err = b.dump(unix.RTM_GETROUTE, req, unix.RTM_NEWROUTE, func(m []byte) {
			pfx, r, ok := parseRouteMsg(m)
			if !ok {
				return
			}
			if _, dup := d.one[pfx]; dup {
				d.more[pfx] = append(d.more[pfx], r)
			} else {
				d.one[pfx] = r
			}
		})
		if !errors.Is(err, errDumpInterrupted) {
			break
		}
	}
	return err
}
