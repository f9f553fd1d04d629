package lease

import (
	"encoding/json"
	"net/netip"
	"testing"
)

// The values below are byte for byte what flannel writes.
func TestFlannelFormat(t *testing.T) {
	cases := []struct {
		attrs Attrs
		want  string
	}{
		{Attrs{PublicIP: netip.MustParseAddr("198.18.0.11"), BackendType: "host-gw"},
			`{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}`},
		{Attrs{PublicIP: netip.MustParseAddr("198.18.0.11"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"ce:f2:68:4a:49:d2"}`)},
			`{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ce:f2:68:4a:49:d2"}}`},
		{Attrs{PublicIP: netip.MustParseAddr("198.18.0.11")},
			`{"PublicIP":"198.18.0.11","PublicIPv6":null}`},
	}
	for _, c := range cases {
		got, err := c.attrs.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("Encode = %s\nwant     %s", got, c.want)
		}
		back, err := DecodeAttrs([]byte(c.want))
		if err != nil {
			t.Fatal(err)
		}
		again, _ := back.Encode()
		if string(again) != c.want {
			t.Errorf("round trip = %s, want %s", again, c.want)
		}
	}
}

func TestKeys(t *testing.T) {
	p := netip.MustParsePrefix("10.244.7.0/24")
	if k := SubnetKey(p); k != "10.244.7.0-24" {
		t.Fatalf("SubnetKey = %q", k)
	}
	for _, k := range []string{"10.244.7.0-24", "/coreos.com/network/subnets/10.244.7.0-24"} {
		got, err := ParseSubnetKey(k)
		if err != nil || got != p {
			t.Errorf("ParseSubnetKey(%q) = %v, %v", k, got, err)
		}
	}
	for _, bad := range []string{"", "10.244.7.0", "10.244.7.0-", "10.244.7.0-33", "10.244.7.1-24", "x-24", "10.244.7.0-024", "10.244.7.0--1"} {
		if _, err := ParseSubnetKey(bad); err == nil {
			t.Errorf("ParseSubnetKey(%q) accepted", bad)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, bad := range []string{``, `null`, `{}`, `{"PublicIP":"fd00::1"}`, `{"PublicIP":"1.2.3"}`, `{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}`, `[]`} {
		if _, err := DecodeAttrs([]byte(bad)); err == nil {
			t.Errorf("DecodeAttrs(%q) accepted", bad)
		}
	}
}

// FuzzDecode: lease keys and values come from other hosts and must never
// crash the agent.
func FuzzDecode(f *testing.F) {
	f.Add("/coreos.com/network/subnets/10.244.7.0-24", []byte(`{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ce:f2:68:4a:49:d2"}}`))
	f.Add("10.244.7.0-24", []byte(`{"PublicIP":"198.18.0.11","PublicIPv6":"fd00::1"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := Decode(key, value)
		if err != nil {
			return
		}
		if !l.Subnet.IsValid() || !l.Attrs.PublicIP.Is4() {
			t.Fatalf("accepted an invalid lease: %+v", l)
		}
		if _, err := ParseSubnetKey(SubnetKey(l.Subnet)); err != nil {
			t.Fatalf("key does not round-trip: %v", err)
		}
	})
}
