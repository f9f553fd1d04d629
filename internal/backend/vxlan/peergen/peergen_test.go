package peergen

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/config"
)

func TestLeases(t *testing.T) {
	n, err := config.Parse([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24}`))
	if err != nil {
		t.Fatal(err)
	}
	taken := map[netip.Prefix]bool{n.SubnetAt(n.SubnetCount() - 1): true}
	ls, err := Leases(n, Options{Count: 5000, BackendType: "vxlan", Taken: taken})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 5000 {
		t.Fatalf("%d leases, want 5000", len(ls))
	}
	subs, pubs, macs := map[netip.Prefix]bool{}, map[netip.Addr]bool{}, map[string]bool{}
	for _, l := range ls {
		if taken[l.Subnet] || !n.Assignable(l.Subnet) || subs[l.Subnet] {
			t.Fatalf("bad or duplicate subnet %s", l.Subnet)
		}
		subs[l.Subnet] = true
		if !IsSynthetic(l) || pubs[l.Attrs.PublicIP] {
			t.Fatalf("bad or duplicate public IP %s", l.Attrs.PublicIP)
		}
		pubs[l.Attrs.PublicIP] = true
		var d struct {
			VNI     int
			VtepMAC string
		}
		if err := json.Unmarshal(l.Attrs.BackendData, &d); err != nil || d.VNI != 1 {
			t.Fatalf("BackendData %s: %v", l.Attrs.BackendData, err)
		}
		m, err := net.ParseMAC(d.VtepMAC)
		if err != nil || m[0]&1 != 0 || macs[d.VtepMAC] {
			t.Fatalf("bad or duplicate VtepMAC %q", d.VtepMAC)
		}
		macs[d.VtepMAC] = true
	}
	if _, err := Leases(n, Options{Count: MaxCount + 1}); err == nil {
		t.Error("count above MaxCount accepted")
	}
	small, _ := config.Parse([]byte(`{"Network":"10.1.0.0/22"}`))
	if _, err := Leases(small, Options{Count: 10}); err == nil {
		t.Error("more peers than free subnets accepted")
	}
}
