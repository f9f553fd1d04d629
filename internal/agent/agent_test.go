package agent

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
)

func TestMergeOptions(t *testing.T) {
	got, err := mergeOptions([]byte(`{"Type":"vxlan","VNI":4}`), []byte(`{"Mode":"reactive"}`))
	if err != nil || string(got) != `{"Mode":"reactive","Type":"vxlan","VNI":4}` {
		t.Fatalf("got %s, %v", got, err)
	}
	if _, err := mergeOptions([]byte(`{"Type":"vxlan"}`), []byte(`{"Type":"udp"}`)); err == nil || !strings.Contains(err.Error(), "Type") {
		t.Fatalf("changing Type: %v", err)
	}
	if _, err := mergeOptions([]byte(`{"Type":"vxlan"}`), []byte(`[1]`)); err == nil {
		t.Fatal("non-object override accepted")
	}
}

func TestOwnMissing(t *testing.T) {
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.244.7.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.18.0.11")}}
	other := lease.Lease{Subnet: netip.MustParsePrefix("10.244.8.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.18.0.12")}}
	if why := ownMissing([]lease.Lease{other, own}, own); why != "" {
		t.Fatalf("present lease reported missing: %s", why)
	}
	if why := ownMissing([]lease.Lease{other}, own); !strings.Contains(why, "deleted") {
		t.Fatalf("deleted lease: %q", why)
	}
	taken := own
	taken.Attrs.PublicIP = netip.MustParseAddr("198.18.0.99")
	if why := ownMissing([]lease.Lease{taken}, own); !strings.Contains(why, "198.18.0.99") {
		t.Fatalf("reassigned lease: %q", why)
	}
}

type fakeCounters map[string]uint64

func (f fakeCounters) Counters() map[string]uint64 { return f }

func TestMetrics(t *testing.T) {
	a := New(Config{}, nil, nil, nil)
	a.metrics.reconciles.Add(3)
	a.metrics.peers.Store(7)
	var c backend.Counters = fakeCounters{"rx_dropped_unknown-sender": 2, "tx_packets": 10}
	a.metrics.counters.Store(&c)
	a.ready.Store(true)
	rec := httptest.NewRecorder()
	a.serveMetrics(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{"weftd_ready 1\n", "weftd_peers 7\n", "weftd_reconciles_total 3\n",
		`weftd_backend_total{counter="rx_dropped_unknown-sender"} 2` + "\n", `weftd_backend_total{counter="tx_packets"} 10` + "\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}
