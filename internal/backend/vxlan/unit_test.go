package vxlan

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func TestParseOptions(t *testing.T) {
	s, err := parseOptions(json.RawMessage(`{"Type":"vxlan"}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.vni != 1 || s.port != 8472 || s.mode != ModeStatic || s.device != "flannel.1" || s.csum != csumAuto || s.learning {
		t.Errorf("defaults: %+v", s)
	}
	s, err = parseOptions(json.RawMessage(`{"Type":"vxlan","VNI":42,"Port":4789,"GBP":true,"DirectRouting":true,"MTU":1400,"MacPrefix":"0E:2A","Mode":"Reactive","TxChecksumOffload":"off"}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.vni != 42 || s.port != 4789 || !s.gbp || !s.directRouting || s.mtu != 1400 || s.device != "flannel.42" ||
		s.mode != ModeReactive || s.csum != csumOff || s.macPrefix.String() != "0e:2a" {
		t.Errorf("parsed: %+v", s)
	}
	if s, _ := parseOptions(json.RawMessage(`{"VNI":0}`)); s.vni != 0 || s.device != "flannel.0" {
		t.Errorf("explicit VNI 0: %+v", s)
	}
	bad := map[string]string{
		`{"VNI":16777216}`:                  "Backend.VNI",
		`{"VNI":"1"}`:                       "Backend.VNI",
		`{"Port":70000}`:                    "Backend.Port",
		`{"MTU":100}`:                       "Backend.MTU",
		`{"MacPrefix":"zz"}`:                "Backend.MacPrefix",
		`{"MacPrefix":"01:00"}`:             "Backend.MacPrefix",
		`{"Mode":"lazy"}`:                   "Backend.Mode",
		`{"DeviceName":"a/b"}`:              "Backend.DeviceName",
		`{"DeviceName":"sixteen-chars-xx"}`: "Backend.DeviceName",
		`{"TxChecksumOffload":"maybe"}`:     "Backend.TxChecksumOffload",
		`{"Bogus":1}`:                       "Backend.Bogus",
	}
	for in, field := range bad {
		_, err := parseOptions(json.RawMessage(in))
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: error %v, want a FieldError for %s", in, err, field)
		}
	}
}

func vxLease(subnet, pub, data string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan", BackendData: json.RawMessage(data)}}
}

func TestDecodePeer(t *testing.T) {
	p, err := decodePeer(vxLease("10.244.3.0/24", "198.18.0.13", `{"VNI":1,"VtepMAC":"0e:2a:00:00:00:03"}`), 1)
	if err != nil || p.mac.String() != "0e:2a:00:00:00:03" || p.public.String() != "198.18.0.13" {
		t.Fatalf("%+v %v", p, err)
	}
	cases := map[string]lease.Lease{
		"VtepMAC":     vxLease("10.244.3.0/24", "198.18.0.13", `{"VNI":1,"VtepMAC":"not-a-mac"}`),
		"multicast":   vxLease("10.244.3.0/24", "198.18.0.13", `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`),
		"zero":        vxLease("10.244.3.0/24", "198.18.0.13", `{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`),
		"VNI is 2":    vxLease("10.244.3.0/24", "198.18.0.13", `{"VNI":2,"VtepMAC":"0e:2a:00:00:00:03"}`),
		"BackendData": vxLease("10.244.3.0/24", "198.18.0.13", `[]`),
		"PublicIP":    vxLease("10.244.3.0/24", "0.0.0.0", `{"VNI":1,"VtepMAC":"0e:2a:00:00:00:03"}`),
	}
	for want, l := range cases {
		_, err := decodePeer(l, 1)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "10.244.3.0/24") {
			t.Errorf("%s: error %v", want, err)
		}
	}
	hg := vxLease("10.244.3.0/24", "198.18.0.13", `{}`)
	hg.Attrs.BackendType = "host-gw"
	if _, err := decodePeer(hg, 1); err == nil || !strings.Contains(err.Error(), "BackendType") {
		t.Errorf("host-gw lease: %v", err)
	}
}

func TestBuildPeers(t *testing.T) {
	own := netip.MustParsePrefix("10.244.1.0/24")
	network := netip.MustParsePrefix("10.244.0.0/16")
	ls := []lease.Lease{
		vxLease("10.244.1.0/24", "198.18.0.11", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`), // own
		vxLease("10.244.2.0/24", "198.18.0.12", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}`),
		vxLease("10.244.3.0/24", "198.18.1.13", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}`),
		vxLease("10.244.4.0/24", "198.18.1.14", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}`), // MAC taken
		vxLease("10.245.0.0/24", "198.18.0.15", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:05"}`), // outside
		vxLease("10.244.1.0/25", "198.18.0.16", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}`), // overlaps own
		vxLease("10.244.6.0/24", "198.18.0.17", `{"VNI":1,"VtepMAC":"bad"}`),
		vxLease("10.244.7.0/24", "198.18.0.11", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`), // stale own lease
	}
	seg := netip.MustParsePrefix("198.18.0.0/24")
	tbl, errs := buildPeers(ls, own, network, 1, seg.Contains, nil, peer{public: netip.MustParseAddr("198.18.0.11"), mac: hwAddr{0x0e, 0, 0, 0, 0, 1}})
	if len(tbl.peers) != 2 || len(errs) != 5 {
		t.Fatalf("peers %d, errors %d (%v)", len(tbl.peers), len(errs), errs)
	}
	if p := tbl.lookupIP(netip.MustParseAddr("10.244.2.77")); p == nil || !p.direct {
		t.Errorf("10.244.2.77: %+v, want the direct peer 10.244.2.0/24", p)
	}
	if p := tbl.lookupIP(netip.MustParseAddr("10.244.3.1")); p == nil || p.direct || tbl.byMAC[p.mac] != p {
		t.Errorf("10.244.3.1: %+v, want the tunnel peer 10.244.3.0/24", p)
	}
	if p := tbl.lookupIP(netip.MustParseAddr("10.244.9.1")); p != nil {
		t.Errorf("10.244.9.1: %+v, want none", p)
	}
	var nilTable *peerTable
	if nilTable.lookupIP(netip.MustParseAddr("10.244.3.1")) != nil {
		t.Error("nil table answered")
	}
}

func TestDeriveMAC(t *testing.T) {
	a := deriveMAC(netip.MustParseAddr("198.18.0.11"), 1, nil)
	if a != deriveMAC(netip.MustParseAddr("198.18.0.11"), 1, nil) {
		t.Error("not deterministic")
	}
	if a == deriveMAC(netip.MustParseAddr("198.18.0.12"), 1, nil) || a == deriveMAC(netip.MustParseAddr("198.18.0.11"), 2, nil) {
		t.Error("same MAC for another host or VNI")
	}
	if a[0]&1 != 0 || a[0]&2 == 0 {
		t.Errorf("%s is not a locally administered unicast MAC", a)
	}
	p := deriveMAC(netip.MustParseAddr("198.18.0.11"), 1, []byte{0x0e, 0x2a})
	if p[0] != 0x0e || p[1] != 0x2a {
		t.Errorf("prefix not applied: %s", p)
	}
	dir := t.TempDir()
	path := macFile(dir, "flannel.1")
	if _, ok, err := loadMAC(path); ok || err != nil {
		t.Fatalf("missing file: ok %v err %v", ok, err)
	}
	if err := saveMAC(path, a); err != nil {
		t.Fatal(err)
	}
	if m, ok, err := loadMAC(path); !ok || err != nil || m != a {
		t.Fatalf("round trip: %s %v %v", m, ok, err)
	}
}

func TestChecksumDecision(t *testing.T) {
	for _, c := range []struct {
		setting      string
		major, minor int
		release      string
		want         bool
	}{
		{csumAuto, 4, 19, "4.19.0", false},
		{csumAuto, 5, 6, "5.6.19", false},
		{csumAuto, 5, 7, "5.7.0", true},
		{csumAuto, 6, 18, "6.18.44-fc", true},
		{csumAuto, 0, 0, "", true},
		{csumOff, 6, 18, "6.18.0", false},
		{csumOn, 3, 10, "3.10.0", true},
	} {
		if got, why := checksumDecision(c.setting, c.major, c.minor, c.release); got != c.want || why == "" {
			t.Errorf("%s on %s: %v (%s), want %v", c.setting, c.release, got, why, c.want)
		}
	}
	for r, want := range map[string][2]int{"6.18.44-fc-v657": {6, 18}, "5.4.0-150-generic": {5, 4}, "4.19.0+": {4, 19}} {
		ma, mi, ok := parseRelease(r)
		if !ok || ma != want[0] || mi != want[1] {
			t.Errorf("parseRelease(%q) = %d.%d %v", r, ma, mi, ok)
		}
	}
	if _, _, ok := parseRelease("garbage"); ok {
		t.Error("garbage release parsed")
	}
}

// FuzzDecodePeer feeds lease values written by other hosts (untrusted) to
// the peer decoder: it must return a peer or an error, never panic, and a
// peer it accepts is a usable tunnel endpoint.
func FuzzDecodePeer(f *testing.F) {
	f.Add([]byte(`{"PublicIP":"198.18.0.12","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2a:00:00:00:02"}}`))
	f.Add([]byte(`{"PublicIP":"198.18.0.12","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}`))
	f.Add([]byte(`{"PublicIP":"198.18.0.12","BackendType":"vxlan","BackendData":null}`))
	f.Add([]byte(`{"PublicIP":"198.18.0.12","BackendType":"vxlan","BackendData":{"VNI":"1"}}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		l, err := lease.Decode("/coreos.com/network/subnets/10.244.2.0-24", value)
		if err != nil {
			return
		}
		p, err := decodePeer(l, 1)
		if err != nil {
			return
		}
		if p.mac.isZero() || p.mac[0]&1 != 0 || !p.public.Is4() || !p.subnet.IsValid() {
			t.Fatalf("accepted a bad peer %+v from %q", p, value)
		}
	})
}
