package vxlan

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/vxlan/peergen"
	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkReconcile5000 measures one host (the backend alone, in a test
// namespace) programming 5000 synthetic peers from nothing ("program": the
// time of one Reconcile that adds 5000 routes, neighbours and FDB entries,
// followed by an untimed removal of all of them), and a periodic resync
// that finds nothing to change ("resync"). Run:
//
//	go test -run '^$' -bench Reconcile5000 -benchmem ./internal/backend/vxlan
func BenchmarkReconcile5000(b *testing.B) {
	l := newLab(b, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	l.start(h, "")
	peers, err := peergen.Leases(l.netCfg, peergen.Options{Count: 5000, BackendType: "vxlan", Taken: map[netip.Prefix]bool{h.subnet: true}})
	if err != nil {
		b.Fatal(err)
	}
	none := []lease.Lease{h.lease()}
	ctx := context.Background()
	b.Run("program", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := h.be.Reconcile(ctx, peers); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := h.be.Reconcile(ctx, none); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	if err := h.be.Reconcile(ctx, peers); err != nil {
		b.Fatal(err)
	}
	b.Run("resync", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := h.be.Reconcile(ctx, peers); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkReactiveFirstPacket measures, in reactive mode, how much longer
// the first echo to a peer takes than the next ones: the time to answer
// the misses on both sides (each host asks for the other's pod address).
// Between rounds Weft's entries are removed by a Reconcile with no peers.
// Run:
//
//	go test -run '^$' -bench ReactiveFirstPacket -benchtime 10x ./internal/backend/vxlan
func BenchmarkReactiveFirstPacket(b *testing.B) {
	l := newLab(b, reactiveNet)
	for i := 1; i <= 2; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	for _, h := range l.hosts {
		l.start(h, "")
	}
	h1, h2 := l.hosts[0], l.hosts[1]
	ctx := context.Background()
	var extra []time.Duration
	for i := 0; i < b.N; i++ {
		for _, h := range l.hosts {
			if err := h.be.Reconcile(ctx, []lease.Lease{h.lease()}); err != nil {
				b.Fatal(err)
			}
		}
		l.reconcileAll()
		first, steady := pingRTTs(b, h1, h2.podIP)
		extra = append(extra, first-steady)
	}
	slices.Sort(extra)
	med := extra[len(extra)/2]
	b.Logf("first echo slower by %v (median of %d; all %v)", med, len(extra), extra)
	b.ReportMetric(float64(med.Microseconds()), "µs-first-packet-extra")
}
