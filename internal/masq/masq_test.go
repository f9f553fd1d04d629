package masq_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/cni/cnitest"
	"github.com/weft-net/weft/internal/masq"
)

var (
	network    = netip.MustParsePrefix("10.244.0.0/16")
	hostSubnet = netip.MustParsePrefix("10.244.1.0/24")
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		cnitest.CleanStale("m")
	}
	os.Exit(m.Run())
}

func TestEnsureRejectsBadInput(t *testing.T) {
	// Run inside a test namespace so that a regression cannot write rules
	// into the root namespace.
	cnitest.RequireRoot(t)
	host := cnitest.NewNS(t, cnitest.NSName("m", "bad"))
	for _, tc := range []struct{ n, s string }{
		{"10.244.0.0/16", "10.245.1.0/24"},
		{"10.244.0.1/16", "10.244.1.0/24"},
		{"fd00::/64", "fd00::/80"},
	} {
		err := cnitest.In(host, func() error { return masq.Ensure(netip.MustParsePrefix(tc.n), netip.MustParsePrefix(tc.s)) })
		if err == nil {
			t.Errorf("Ensure(%s, %s) accepted bad input", tc.n, tc.s)
		}
	}
}

// lab is three namespaces around a host: a local pod, a pod of another
// host's subnet (reached by a route, as across the overlay), and the
// outside world.
type lab struct {
	host, pod, remote, outside string
}

func newLab(t *testing.T) *lab {
	cnitest.RequireRoot(t)
	l := &lab{
		host:    cnitest.NewNS(t, cnitest.NSName("m", "host")),
		pod:     cnitest.NewNS(t, cnitest.NSName("m", "pod")),
		remote:  cnitest.NewNS(t, cnitest.NSName("m", "remote")),
		outside: cnitest.NewNS(t, cnitest.NSName("m", "out")),
	}
	connect(t, l.host, l.pod, "wm-pod", "10.244.1.1/24", "10.244.1.5/24")
	connect(t, l.host, l.remote, "wm-rem", "10.244.2.1/24", "10.244.2.7/24")
	connect(t, l.host, l.outside, "wm-out", "198.18.50.1/24", "198.18.50.2/24")
	hh, err := cnitest.Handle(l.host)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := cnitest.In(l.host, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	// The outside knows the way back to the pod network (so that traffic
	// from outside into it can be tested), but masquerading must not need it.
	oh, err := cnitest.Handle(l.outside)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	out, _ := oh.LinkByName("eth0")
	if err := oh.RouteAdd(&netlink.Route{LinkIndex: out.Attrs().Index, Dst: prefixNet("10.244.0.0/16"), Gw: net.ParseIP("198.18.50.1")}); err != nil {
		t.Fatal(err)
	}
	return l
}

// connect links host and other with a veth pair (hostName on the host,
// eth0 in other) and gives other a default route via the host.
func connect(t *testing.T, host, other, hostName, hostAddr, otherAddr string) {
	t.Helper()
	hh, err := cnitest.Handle(host)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	o, err := ns.GetNS(other)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	la := netlink.NewLinkAttrs()
	la.Name = hostName
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(o.Fd()))}); err != nil {
		t.Fatal(err)
	}
	hl, _ := hh.LinkByName(hostName)
	a, _ := netlink.ParseAddr(hostAddr)
	if err := hh.AddrAdd(hl, a); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	oh, err := cnitest.Handle(other)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	ol, _ := oh.LinkByName("eth0")
	a, _ = netlink.ParseAddr(otherAddr)
	if err := oh.AddrAdd(ol, a); err != nil {
		t.Fatal(err)
	}
	if err := oh.LinkSetUp(ol); err != nil {
		t.Fatal(err)
	}
	gw, _ := netip.ParsePrefix(hostAddr)
	if err := oh.RouteAdd(&netlink.Route{LinkIndex: ol.Attrs().Index, Gw: gw.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

func prefixNet(s string) *net.IPNet {
	_, n, _ := net.ParseCIDR(s)
	return n
}

// sourceSeen sends a UDP datagram from namespace from to dst:port (a
// listener opened in namespace to) and returns the source address the
// receiver saw.
func sourceSeen(t *testing.T, from, to string, dst netip.Addr) netip.Addr {
	t.Helper()
	var conn *net.UDPConn
	if err := cnitest.In(to, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: dst.AsSlice()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.UDPAddr).Port
	if err := cnitest.In(from, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: dst.AsSlice(), Port: port})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("weft"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	_, src, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("datagram to %s: %v", dst, err)
	}
	return src.Addr().Unmap()
}

func inHost(t *testing.T, l *lab, fn func() error) {
	t.Helper()
	if err := cnitest.In(l.host, fn); err != nil {
		t.Fatal(err)
	}
}

func TestMasqueradeTraffic(t *testing.T) {
	l := newLab(t)
	podIP, remoteIP := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.244.2.7")
	outsideIP, hostOut := netip.MustParseAddr("198.18.50.2"), netip.MustParseAddr("198.18.50.1")

	// Without Weft's table nothing is rewritten.
	if got := sourceSeen(t, l.pod, l.outside, outsideIP); got != podIP {
		t.Fatalf("before Ensure the outside saw %s, want %s", got, podIP)
	}
	inHost(t, l, func() error { return masq.Ensure(network, hostSubnet) })

	if got := sourceSeen(t, l.pod, l.outside, outsideIP); got != hostOut {
		t.Errorf("pod to outside: source %s, want the host's %s", got, hostOut)
	}
	if got := sourceSeen(t, l.pod, l.remote, remoteIP); got != podIP {
		t.Errorf("pod to pod: source %s, want the pod's %s", got, podIP)
	}
	if got := sourceSeen(t, l.outside, l.pod, podIP); got != outsideIP {
		t.Errorf("outside to pod: source %s, want the outside's %s", got, outsideIP)
	}

	inHost(t, l, masq.Cleanup)
	// New flows are no longer masqueraded (a new socket, a new conntrack entry).
	if got := sourceSeen(t, l.pod, l.outside, outsideIP); got != podIP {
		t.Errorf("after Cleanup the outside saw %s, want %s", got, podIP)
	}
}

func handles(t *testing.T, l *lab) []uint64 {
	t.Helper()
	var hs []uint64
	inHost(t, l, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: masq.Table, Family: nftables.TableFamilyIPv4}
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: masq.Chain, Table: tbl})
		for _, r := range rules {
			hs = append(hs, r.Handle)
		}
		return err
	})
	return hs
}

func rules(t *testing.T, l *lab) []string {
	t.Helper()
	var rs []string
	inHost(t, l, func() (err error) { rs, err = masq.Rules(); return err })
	return rs
}

func TestEnsureIdempotentAndRepairs(t *testing.T) {
	l := newLab(t)
	inHost(t, l, func() error { return masq.Ensure(network, hostSubnet) })
	rs := rules(t, l)
	if len(rs) != 4 || !strings.Contains(rs[0], "pod to pod") || !strings.Contains(rs[1], "multicast") || !strings.Contains(rs[3], "host's address") {
		t.Fatalf("rules %q", rs)
	}
	inHost(t, l, func() error { return masq.Check(network) })
	before := handles(t, l)
	inHost(t, l, func() error { return masq.Ensure(network, hostSubnet) })
	if after := handles(t, l); !equal(before, after) {
		t.Errorf("a second Ensure rewrote the rules: handles %v then %v", before, after)
	}

	// Someone appends a rule to Weft's chain: Ensure restores the table.
	inHost(t, l, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: masq.Table, Family: nftables.TableFamilyIPv4}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: masq.Chain, Table: tbl}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		return c.Flush()
	})
	if n := len(rules(t, l)); n != 5 {
		t.Fatalf("tampering failed: %d rules", n)
	}
	inHost(t, l, func() error { return masq.Ensure(network, hostSubnet) })
	if rs := rules(t, l); len(rs) != 4 {
		t.Errorf("after repair: %q", rs)
	}

	// The table is deleted: Ensure puts it back.
	inHost(t, l, masq.Cleanup)
	if rs := rules(t, l); rs != nil {
		t.Fatalf("after Cleanup: %q", rs)
	}
	inHost(t, l, masq.Cleanup) // idempotent
	if err := cnitest.In(l.host, func() error { return masq.Check(network) }); err == nil {
		t.Error("Check found the rules in place after Cleanup")
	}
	inHost(t, l, func() error { return masq.Ensure(network, hostSubnet) })
	if rs := rules(t, l); len(rs) != 4 {
		t.Errorf("after restore: %q", rs)
	}

	// Another network: the rules follow.
	other := netip.MustParsePrefix("10.96.0.0/12")
	inHost(t, l, func() error { return masq.Ensure(other, netip.MustParsePrefix("10.96.3.0/24")) })
	if rs := rules(t, l); len(rs) != 4 || !strings.Contains(rs[0], "10.96.0.0/12") {
		t.Errorf("after a network change: %q", rs)
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestKeep: while Keep runs, a deleted table or a foreign rule in Weft's
// chain is put right at once, long before any resync.
func TestKeep(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cnitest.In(l.host, func() error {
			return masq.Keep(ctx, network, hostSubnet, func(err error) { t.Errorf("Keep: %v", err) })
		})
	}()
	waitRules := func(what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			rs := rules(t, l)
			if len(rs) == 4 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: rules %q not restored within 3s", what, rs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRules("start")
	inHost(t, l, masq.Cleanup)
	waitRules("after the table was deleted")
	inHost(t, l, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: masq.Table, Family: nftables.TableFamilyIPv4}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: masq.Chain, Table: tbl}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		return c.Flush()
	})
	waitRules("after a foreign rule was added")
	// Traffic is masqueraded again.
	if got := sourceSeen(t, l.pod, l.outside, netip.MustParseAddr("198.18.50.2")); got != netip.MustParseAddr("198.18.50.1") {
		t.Errorf("pod to outside after repairs: source %s", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Keep returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not return after its context was cancelled")
	}
}

// TestEnsureConcurrent: many callers at once (weftd and a burst of plugin
// processes) all succeed and leave exactly one copy of the rules.
func TestEnsureConcurrent(t *testing.T) {
	cnitest.RequireRoot(t)
	host := cnitest.NewNS(t, cnitest.NSName("m", "conc"))
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- cnitest.In(host, func() error { return masq.Ensure(network, hostSubnet) })
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Ensure: %v", err)
		}
	}
	var rs []string
	if err := cnitest.In(host, func() (err error) { rs, err = masq.Rules(); return err }); err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Errorf("after %d concurrent Ensure calls: rules %q", n, rs)
	}
}
