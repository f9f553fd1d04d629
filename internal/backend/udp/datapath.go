package udp

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	// bufSize is the size of each packet buffer: room for a GRO'd datagram
	// or a coalesced TCP segment of up to 64 KiB. GSO in conn.Send and
	// coalescing in tun.Write append into the spare capacity of the first
	// buffer of a batch, so every buffer slice keeps its capacity to the end
	// of its own bufSize region.
	bufSize = 1 << 16
	// writeOffset is the room in front of a packet written to the TUN
	// device, for the virtio-net header tun.Write puts there (at least 10).
	writeOffset = 16
	// icmpPerSecond and icmpBurst bound the ICMP errors sent.
	icmpPerSecond = 100
	icmpBurst     = 20
	// logEvery bounds how often one routine logs a recurring error.
	logEvery = 10 * time.Second
)

// counters are the packet path's statistics, updated atomically.
type counters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	txBatches, rxBatches                   atomic.Uint64
	txDrops, rxDrops                       [len(verdictNames)]atomic.Uint64
	icmpSent                               atomic.Uint64
	readErrors, sendErrors, writeErrors    atomic.Uint64
}

// Stats is a snapshot of the packet path's counters.
type Stats struct {
	// TxPackets and TxBytes count packets read from the TUN device and sent
	// to peers (inner packets and their bytes).
	TxPackets, TxBytes uint64
	// RxPackets and RxBytes count packets received from peers and written
	// into the TUN device.
	RxPackets, RxBytes uint64
	// TxBatches and RxBatches count the reads from the TUN device and the
	// receive calls on the socket that returned packets: packets per batch
	// show how well the offloads work.
	TxBatches, RxBatches uint64
	// TxDropped counts packets from the TUN device not sent, by reason
	// (e.g. "no-peer"); RxDropped counts datagrams refused, by reason
	// (e.g. "unknown-sender", "length", "checksum", "inner-src").
	TxDropped, RxDropped map[string]uint64
	// ICMPSent counts ICMP errors written back into the TUN device.
	ICMPSent uint64
	// ReadErrors, SendErrors and WriteErrors count failed reads from the
	// TUN device, sends on the UDP socket and writes into the TUN device.
	ReadErrors, SendErrors, WriteErrors uint64
}

// Stats returns the packet path's counters.
func (b *Backend) Stats() Stats {
	c := &b.stats
	s := Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxBatches: c.txBatches.Load(), RxBatches: c.rxBatches.Load(),
		TxDropped: map[string]uint64{}, RxDropped: map[string]uint64{},
		ICMPSent:   c.icmpSent.Load(),
		ReadErrors: c.readErrors.Load(), SendErrors: c.sendErrors.Load(), WriteErrors: c.writeErrors.Load(),
	}
	for v := range verdictNames {
		if n := c.txDrops[v].Load(); n > 0 {
			s.TxDropped[verdict(v).String()] = n
		}
		if n := c.rxDrops[v].Load(); n > 0 {
			s.RxDropped[verdict(v).String()] = n
		}
	}
	return s
}

// Counters implements [backend.Counters] for /metrics.
func (b *Backend) Counters() map[string]uint64 {
	s := b.Stats()
	m := map[string]uint64{
		"tx_packets": s.TxPackets, "tx_bytes": s.TxBytes, "rx_packets": s.RxPackets, "rx_bytes": s.RxBytes,
		"tx_batches": s.TxBatches, "rx_batches": s.RxBatches, "icmp_sent": s.ICMPSent,
		"read_errors": s.ReadErrors, "send_errors": s.SendErrors, "write_errors": s.WriteErrors,
	}
	for reason, n := range s.TxDropped {
		m["tx_dropped_"+reason] = n
	}
	for reason, n := range s.RxDropped {
		m["rx_dropped_"+reason] = n
	}
	return m
}

// buffers is a batch of packet buffers, each a bufSize region of one
// allocation.
type buffers struct {
	full  [][]byte // each region whole
	bufs  [][]byte // each region from off, capacity to its end
	sizes []int
}

func newBuffers(n, off int) *buffers {
	mem := make([]byte, n*bufSize)
	bb := &buffers{full: make([][]byte, n), bufs: make([][]byte, n), sizes: make([]int, n)}
	for i := range n {
		r := mem[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		bb.full[i] = r
		bb.bufs[i] = r[off:]
	}
	return bb
}

// datapath is one running instance of the packet path: the attached TUN
// queues, the socket and the routines moving packets between them.
type datapath struct {
	queues tunQueues
	bind   conn.Bind
	wg     sync.WaitGroup
}

// startDatapath starts the packet path over queues and bind: one routine
// per TUN queue to the peers, one per receive function from the peers to
// the TUN device (writes may use any queue).
func (b *Backend) startDatapath(queues tunQueues, bind conn.Bind, recvs []conn.ReceiveFunc) *datapath {
	dp := &datapath{queues: queues, bind: bind}
	for _, q := range queues {
		dp.wg.Go(func() { b.routineTUNToPeers(q, bind) })
	}
	for i, recv := range recvs {
		q := queues[i%len(queues)]
		dp.wg.Go(func() { b.routinePeersToTUN(q, recv, bind.BatchSize()) })
	}
	return dp
}

// stop closes the socket and detaches from the TUN device (which stays),
// and waits for the routines to return.
func (dp *datapath) stop() error {
	err := errors.Join(dp.bind.Close(), dp.queues.Close())
	dp.wg.Wait()
	return err
}

// group is the packets of one batch that go to one peer.
type group struct {
	peer int
	bufs [][]byte
}

// routineTUNToPeers reads batches from the TUN device, looks up each
// packet's peer and sends each peer's packets in one batch (UDP GSO).
func (b *Backend) routineTUNToPeers(dev *tunDevice, bind conn.Bind) {
	batch := dev.BatchSize()
	in := newBuffers(batch, 0)
	icmp := newBuffers(icmpBurst, writeOffset)
	var (
		groups   []group
		icmpOut  [][]byte
		lim      = limiter{rate: icmpPerSecond, burst: icmpBurst}
		lastLog  time.Time
		eps      = map[int]conn.Endpoint{}
		epsTable *table
	)
	logf := func(msg string, err error) {
		if now := time.Now(); now.Sub(lastLog) >= logEvery {
			lastLog = now
			b.host.Log.Warn(msg, "err", err)
		}
	}
	for {
		n, err := dev.Read(in.bufs, in.sizes, 0)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			b.stats.readErrors.Add(1)
			logf("udp: read from TUN device", err)
			if !errors.Is(err, tun.ErrTooManySegments) || n <= 0 {
				continue
			}
		}
		t := b.tbl.Load()
		if t != epsTable {
			clear(eps)
			epsTable = t
		}
		for i := range groups {
			groups[i].bufs = groups[i].bufs[:0]
		}
		groups = groups[:0]
		icmpOut = icmpOut[:0]
		lastGroup := -1
		var txBytes uint64
		sent := 0
		for i := range n {
			pkt := in.bufs[i][:in.sizes[i]]
			v := checkOutbound(pkt)
			p := -1
			if v == verdictForward {
				if p = t.lookup(dstOf(pkt)); p < 0 {
					v = verdictNoPeer
				}
			}
			if v != verdictForward {
				b.stats.txDrops[v].Add(1)
				if v == verdictNoPeer && t.complete && len(icmpOut) < len(icmp.bufs) && icmpErrorAllowed(pkt) && lim.allow(time.Now()) {
					k := len(icmpOut)
					m := buildICMPError(icmp.bufs[k], pkt, addr32(t.own.Addr()), icmpDestUnreachable, icmpCodeNetUnreach)
					icmpOut = append(icmpOut, icmp.full[k][:writeOffset+m])
				}
				continue
			}
			txBytes += uint64(len(pkt))
			sent++
			if lastGroup < 0 || groups[lastGroup].peer != p {
				lastGroup = -1
				for g := range groups {
					if groups[g].peer == p {
						lastGroup = g
						break
					}
				}
				if lastGroup < 0 {
					if len(groups) < cap(groups) {
						groups = groups[:len(groups)+1]
						groups[len(groups)-1].peer = p
					} else {
						groups = append(groups, group{peer: p, bufs: make([][]byte, 0, batch)})
					}
					lastGroup = len(groups) - 1
				}
			}
			groups[lastGroup].bufs = append(groups[lastGroup].bufs, pkt)
		}
		for _, g := range groups {
			ep, ok := eps[g.peer]
			if !ok {
				ep = &conn.StdNetEndpoint{AddrPort: t.peers[g.peer].dst}
				eps[g.peer] = ep
			}
			if err := bind.Send(g.bufs, ep); err != nil {
				var gsoOff conn.ErrUDPGSODisabled
				if errors.As(err, &gsoOff) {
					b.host.Log.Warn("udp: UDP GSO disabled by the kernel; sending one datagram per packet", "err", err)
					if gsoOff.RetryErr == nil {
						continue
					}
				}
				if errors.Is(err, net.ErrClosed) {
					return
				}
				b.stats.sendErrors.Add(1)
				logf("udp: send to peer", err)
			}
		}
		b.stats.txBatches.Add(1)
		b.stats.txPackets.Add(uint64(sent))
		b.stats.txBytes.Add(txBytes)
		if len(icmpOut) > 0 {
			if _, err := dev.Write(icmpOut, writeOffset); err != nil {
				b.stats.writeErrors.Add(1)
				logf("udp: write ICMP error into TUN device", err)
			} else {
				b.stats.icmpSent.Add(uint64(len(icmpOut)))
			}
		}
	}
}

// routinePeersToTUN receives batches of datagrams (UDP GRO), checks each
// one and writes the accepted packets into the TUN device in one batch,
// where TCP segments are coalesced again.
func (b *Backend) routinePeersToTUN(dev *tunDevice, recv conn.ReceiveFunc, batch int) {
	in := newBuffers(batch, writeOffset)
	eps := make([]conn.Endpoint, batch)
	out := make([][]byte, 0, batch)
	var lastLog time.Time
	logf := func(msg string, err error) {
		if now := time.Now(); now.Sub(lastLog) >= logEvery {
			lastLog = now
			b.host.Log.Warn(msg, "err", err)
		}
	}
	for {
		n, err := recv(in.bufs, in.sizes, eps)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.stats.readErrors.Add(1)
			logf("udp: receive", err)
			continue
		}
		b.stats.rxBatches.Add(1)
		t := b.tbl.Load()
		out = out[:0]
		var rxBytes uint64
		for i := range n {
			size := in.sizes[i]
			if size == 0 || eps[i] == nil {
				continue
			}
			v := verdictUnknownSender
			if ep, ok := eps[i].(*conn.StdNetEndpoint); ok && ep.Addr().Unmap().Is4() {
				v = t.checkInbound(in.bufs[i][:size], addr32(ep.Addr().Unmap()), ep.Port())
			}
			eps[i] = nil
			if v != verdictForward {
				b.stats.rxDrops[v].Add(1)
				continue
			}
			rxBytes += uint64(size)
			out = append(out, in.full[i][:writeOffset+size])
		}
		if len(out) == 0 {
			continue
		}
		b.stats.rxPackets.Add(uint64(len(out)))
		b.stats.rxBytes.Add(rxBytes)
		if _, err := dev.Write(out, writeOffset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			b.stats.writeErrors.Add(1)
			logf("udp: write into TUN device", err)
		}
	}
}

// limiter is a token bucket, used by one goroutine.
type limiter struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (l *limiter) allow(now time.Time) bool {
	if l.last.IsZero() {
		l.tokens = l.burst
	} else {
		l.tokens += now.Sub(l.last).Seconds() * l.rate
		if l.tokens > l.burst {
			l.tokens = l.burst
		}
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
