package agent

import (
	"net/netip"
	"strings"
	"testing"

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
