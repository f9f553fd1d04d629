package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	cases := []struct {
		in                 string
		subnetLen          int
		subnetMin, maxAddr string
		count              uint64
		backend            string
	}{
		{`{"Network":"10.244.0.0/16"}`, 24, "10.244.1.0", "10.244.255.0", 255, "vxlan"},
		{`{"Network":"10.244.0.0/22","Backend":{"Type":"host-gw"}}`, 24, "10.244.1.0", "10.244.3.0", 3, "host-gw"},
		{`{"Network":"10.244.0.0/24"}`, 26, "10.244.0.64", "10.244.0.192", 3, "vxlan"},
		{`{"Network":"10.0.0.0/8","SubnetLen":20}`, 20, "10.0.16.0", "10.255.240.0", 4095, "vxlan"},
		{`{"network":"10.244.0.0/16","backend":{"type":"udp"}}`, 24, "10.244.1.0", "10.244.255.0", 255, "udp"},
	}
	for _, c := range cases {
		n, err := Parse([]byte(c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if n.SubnetLen != c.subnetLen || n.SubnetMin.String() != c.subnetMin || n.SubnetMax.String() != c.maxAddr {
			t.Errorf("%s: got len %d min %s max %s", c.in, n.SubnetLen, n.SubnetMin, n.SubnetMax)
		}
		if got := n.SubnetCount(); got != c.count {
			t.Errorf("%s: SubnetCount = %d, want %d", c.in, got, c.count)
		}
		if n.BackendType != c.backend {
			t.Errorf("%s: backend %q, want %q", c.in, n.BackendType, c.backend)
		}
		if !n.EnableIPv4 {
			t.Errorf("%s: EnableIPv4 should default to true", c.in)
		}
	}
}

func TestErrorsNameTheField(t *testing.T) {
	cases := []struct{ in, field, text string }{
		{`{}`, "Network", "required"},
		{`{"Network":"10.244.0.1/16"}`, "Network", "host bits"},
		{`{"Network":"banana"}`, "Network", "not an IPv4 prefix"},
		{`{"Network":"10.244.0.0/16","SubnetLen":12}`, "SubnetLen", "out of range"},
		{`{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen", "out of range"},
		{`{"Network":"10.244.0.0/29"}`, "Network", "too small"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}`, "SubnetMin", "boundary"},
		{`{"Network":"10.244.0.0/16","SubnetMax":"10.245.0.0"}`, "SubnetMax", "outside"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}`, "SubnetMax", "below"},
		{`{"Network":"10.244.0.0/16","Foo":1}`, "Foo", "unknown key"},
		{`{"Network":"10.244.0.0/16","SubnetLen":"24"}`, "SubnetLen", "must be a JSON"},
		{`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}`, "EnableIPv6", "not supported yet"},
		{`{"EnableIPv4":false,"EnableIPv6":true}`, "IPv6Network", "required"},
		{`{"Network":"10.244.0.0/16","IPv6Network":"fd00::/48","IPv6SubnetLen":130}`, "IPv6SubnetLen", "out of range"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":7}}`, "Backend.Type", "string"},
		{`{"Network":"10.244.0.0/16","Backend":[]}`, "Backend", "object"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.in))
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: got %v, want a FieldError", c.in, err)
			continue
		}
		if fe.Field != c.field || !strings.Contains(fe.Msg, c.text) {
			t.Errorf("%s: got field %q msg %q, want field %q containing %q", c.in, fe.Field, fe.Msg, c.field, c.text)
		}
	}
	if _, err := Parse([]byte(`not json`)); err == nil {
		t.Error("garbage accepted")
	}
}

func TestSubnetsAndAssignable(t *testing.T) {
	n, err := Parse([]byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.73.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetCount() != 64 {
		t.Fatalf("count %d", n.SubnetCount())
	}
	var got []netip.Prefix
	n.Subnets(func(p netip.Prefix) bool { got = append(got, p); return true })
	if len(got) != 64 || got[0].String() != "10.244.10.0/24" || got[63].String() != "10.244.73.0/24" {
		t.Fatalf("subnets: %d, first %v last %v", len(got), got[0], got[len(got)-1])
	}
	for i, p := range got {
		if n.SubnetAt(uint64(i)) != p || !n.Assignable(p) {
			t.Fatalf("SubnetAt(%d) = %v, want %v (assignable %v)", i, n.SubnetAt(uint64(i)), p, n.Assignable(p))
		}
	}
	for _, s := range []string{"10.244.9.0/24", "10.244.74.0/24", "10.244.10.0/25", "10.245.10.0/24"} {
		if n.Assignable(netip.MustParsePrefix(s)) {
			t.Errorf("%s should not be assignable", s)
		}
	}
}

func TestIPv6Math(t *testing.T) {
	p := netip.MustParsePrefix("fd00:1::/48")
	a, ok := NthSubnet(p, 64, 0xabcd)
	if !ok || a.String() != "fd00:1:0:abcd::" {
		t.Fatalf("got %v %v", a, ok)
	}
	if i := subnetIndex(p, 64, a); i != 0xabcd {
		t.Fatalf("index %x", i)
	}
	if _, ok := NthSubnet(p, 64, 1<<16); ok {
		t.Fatal("out of range subnet reported ok")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}`))
	f.Add([]byte(`{"Network":"10.0.0.0/8","SubnetLen":28,"SubnetMin":"10.0.0.16","SubnetMax":"10.255.255.240"}`))
	f.Add([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/16"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(data)
		if err != nil {
			return
		}
		if n.SubnetCount() == 0 || !n.Assignable(n.SubnetAt(0)) || !n.Assignable(n.SubnetAt(n.SubnetCount()-1)) {
			t.Fatalf("valid config with unusable range: %+v", n)
		}
	})
}
