package vxlan

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/vxlan/peergen"
	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkReconcile5000 measures one host programming 5000 synthetic
// peers from scratch, and a resync that finds nothing to change.
func BenchmarkReconcile5000(b *testing.B) {
	l := newLab(b, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	l.start(h, "")
	peers, err := peergen.Leases(l.netCfg, peergen.Options{Count: 5000, BackendType: "vxlan", Taken: map[netip.Prefix]bool{h.subnet: true}})
	if err != nil {
		b.Fatal(err)
	}
	peers = append(peers, h.lease())
	var full, resync time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := h.be.Reconcile(context.Background(), peers); err != nil {
			b.Fatal(err)
		}
		full += time.Since(start)
		start = time.Now()
		if err := h.be.Reconcile(context.Background(), peers); err != nil {
			b.Fatal(err)
		}
		resync += time.Since(start)
		if err := h.be.Reconcile(context.Background(), []lease.Lease{h.lease()}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(full.Milliseconds())/float64(b.N), "ms/program-5000")
	b.ReportMetric(float64(resync.Milliseconds())/float64(b.N), "ms/resync-5000")
}
