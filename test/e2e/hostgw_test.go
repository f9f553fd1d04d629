package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/routes"
	"golang.org/x/sys/unix"
)

// hostRoutes returns host i's routes made by Weft (protocol 87), by
// destination.
func hostRoutes(t testing.TB, l *lab.Lab, i int) map[netip.Prefix]netlink.Route {
	t.Helper()
	h := nlHandle(t, l, i)
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("routes on h%d: %v", i, err)
	}
	out := map[netip.Prefix]netlink.Route{}
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		out[netip.PrefixFrom(a.Unmap(), ones)] = r
	}
	return out
}

// nlHandle returns a netlink handle inside host i's namespace.
func nlHandle(t testing.TB, l *lab.Lab, i int) *netlink.Handle {
	t.Helper()
	hs, err := l.Host(i)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromName(hs.Netns)
	if err != nil {
		t.Fatalf("namespace %s: %v", hs.Netns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", hs.Netns, err)
	}
	return h
}

func subnetOf(t testing.TB, l *lab.Lab, i int) netip.Prefix {
	t.Helper()
	hs, err := l.Host(i)
	if err != nil {
		t.Fatal(err)
	}
	p, err := netip.ParsePrefix(hs.Subnet)
	if err != nil {
		t.Fatalf("h%d subnet %q: %v", i, hs.Subnet, err)
	}
	return p
}

// checkHostGWRoutes asserts that every host routes every peer's subnet via
// the peer's underlay address, and nothing else.
func checkHostGWRoutes(t testing.TB, l *lab.Lab) {
	t.Helper()
	st := l.State()
	for _, h := range st.Hosts {
		got := hostRoutes(t, l, h.Index)
		if len(got) != len(st.Hosts)-1 {
			t.Errorf("%s: %d Weft routes, want %d: %v", h.Name, len(got), len(st.Hosts)-1, got)
		}
		for _, p := range st.Hosts {
			if p.Index == h.Index {
				continue
			}
			r, ok := got[subnetOf(t, l, p.Index)]
			if !ok {
				t.Errorf("%s: no route to %s's subnet %s", h.Name, p.Name, p.Subnet)
				continue
			}
			if !r.Gw.Equal(net.ParseIP(p.UnderlayIP)) {
				t.Errorf("%s: route to %s via %v, want via %s", h.Name, p.Subnet, r.Gw, p.UnderlayIP)
			}
		}
	}
}

// TestHostGWAllPairs: three hosts, two pods each; every pod pings every
// other (lab.Up waits for that; checked again here), and each host routes
// each peer subnet via the peer's underlay address.
func TestHostGWAllPairs(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 2, Backend: "host-gw"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := l.Reachability(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Pods) != 6 {
		t.Fatalf("%d pods, want 6", len(m.Pods))
	}
	if !m.All() {
		t.Fatalf("unreachable pairs: %v", m.Missing())
	}
	checkHostGWRoutes(t, l)
	subnets := map[string]bool{}
	for _, h := range l.State().Hosts {
		if subnets[h.Subnet] {
			t.Errorf("subnet %s leased twice", h.Subnet)
		}
		subnets[h.Subnet] = true
	}
}

// TestHostGWRestartLosesNothing: weftd stops (SIGTERM on the sending host,
// SIGKILL on the receiving one) and starts again while a pod pings a pod on the
// other host every 10 ms; not one echo is lost, because weftd leaves the
// datapath in place and adopts it on start.
func TestHostGWRestartLosesNothing(t *testing.T) {
	requireTool(t, "ping")
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "host-gw"})
	src, _ := l.Pod(1, 1)
	dst, _ := l.Pod(2, 1)
	const count = 600 // 6 s at 10 ms; a restart takes well under a second
	p := startPing(t, src.Netns, dst.IP, "-i", "0.01", "-c", strconv.Itoa(count), "-W", "1")
	eventually(t, 5*time.Second, "first echo reply", func() bool { return p.Replies() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for host, sig := range map[int]syscall.Signal{1: syscall.SIGTERM, 2: syscall.SIGKILL} {
		start := time.Now()
		if err := l.RestartAgent(ctx, host, sig); err != nil {
			t.Fatalf("restart weftd on h%d (%s): %v", host, sig, err)
		}
		t.Logf("h%d: weftd stopped by %s, restarted and ready in %s", host, sig, time.Since(start).Round(time.Millisecond))
		// Let traffic run over the new weftd for a while before the next step.
		before := p.Replies()
		eventually(t, 5*time.Second, "replies after the restart", func() bool { return p.Replies() >= before+50 })
	}
	if p.Replies() >= count {
		t.Fatalf("ping finished before the restarts did: the window is too short to prove anything")
	}
	st, out, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Transmitted != count {
		t.Fatalf("ping sent %d of %d echoes:\n%s", st.Transmitted, count, out[max(0, len(out)-500):])
	}
	if st.Lost() != 0 {
		t.Fatalf("%d of %d echoes lost across two weftd restarts", st.Lost(), st.Transmitted)
	}
	t.Logf("%d/%d echoes answered across two weftd restarts", st.Received, st.Transmitted)
}

// TestHostGWRouteRestored: a Weft route deleted by hand comes back within
// the resync period.
func TestHostGWRouteRestored(t *testing.T) {
	const resync = 2 * time.Second
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "host-gw", ResyncPeriod: resync})
	peer := subnetOf(t, l, 2)
	r, ok := hostRoutes(t, l, 1)[peer]
	if !ok {
		t.Fatalf("h1 has no route to %s", peer)
	}
	h := nlHandle(t, l, 1)
	defer h.Close()
	if err := h.RouteDel(&r); err != nil {
		t.Fatalf("delete route: %v", err)
	}
	if _, still := hostRoutes(t, l, 1)[peer]; still {
		t.Fatal("route still there after RouteDel")
	}
	took := eventually(t, resync+2*time.Second, "route "+peer.String()+" restored on h1", func() bool {
		_, back := hostRoutes(t, l, 1)[peer]
		return back
	})
	t.Logf("route restored after %s (resync period %s)", took.Round(time.Millisecond), resync)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dst, _ := l.Pod(2, 1)
	if err := l.Ping(ctx, "h1-p1", dst.IP); err != nil {
		t.Fatalf("pods after restore: %v", err)
	}
}

// TestHostGWLeaseDeletedRemovesRoute: when a peer's lease disappears from
// etcd, every other host removes its route to that peer's subnet. The
// peer's weftd is stopped first so that it cannot renew the lease.
func TestHostGWLeaseDeletedRemovesRoute(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "host-gw"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gone := subnetOf(t, l, 3)
	if err := l.StopAgent(ctx, 3, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := l.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.DeleteLease(ctx, gone); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		eventually(t, 5*time.Second, "route to deleted lease's subnet removed on h"+strconv.Itoa(i), func() bool {
			_, there := hostRoutes(t, l, i)[gone]
			return !there
		})
	}
	// The remaining peers keep their routes and their pods keep talking.
	if _, ok := hostRoutes(t, l, 1)[subnetOf(t, l, 2)]; !ok {
		t.Error("h1 lost its route to h2")
	}
	dst, _ := l.Pod(2, 1)
	if err := l.Ping(ctx, "h1-p1", dst.IP); err != nil {
		t.Errorf("h1-p1 -> h2-p1 after the lease deletion: %v", err)
	}
}

// TestHostGWRefusesPeerOffLink: host-gw needs peers on a directly connected
// network. Host 3 sits on a second underlay segment behind a router: hosts
// 1 and 2 reach each other, but nobody installs a route to or from host 3.
func TestHostGWRefusesPeerOffLink(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "host-gw", Segments: map[int]int{3: 1}, SkipReachability: true})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The underlay itself routes between the segments.
	h3, _ := l.Host(3)
	if h3.UnderlayIP != "198.18.1.13" {
		t.Fatalf("h3 underlay %s, want 198.18.1.13", h3.UnderlayIP)
	}
	if _, err := inNS(ctx, "weft-"+l.Name()+"-h1", "ping", "-c", "1", "-W", "2", h3.UnderlayIP); err != nil {
		requireTool(t, "ping")
		t.Fatalf("underlay h1 -> h3 through the router: %v", err)
	}
	p2, _ := l.Pod(2, 1)
	if err := l.Ping(ctx, "h1-p1", p2.IP); err != nil {
		t.Fatalf("h1-p1 -> h2-p1 (same segment): %v", err)
	}
	for _, i := range []int{1, 2} {
		if _, ok := hostRoutes(t, l, i)[subnetOf(t, l, 3)]; ok {
			t.Errorf("h%d routes h3's subnet although h3 is not on a directly connected network", i)
		}
	}
	if n := len(hostRoutes(t, l, 3)); n != 0 {
		t.Errorf("h3 installed %d routes to peers that are not on its network", n)
	}
	p3, _ := l.Pod(3, 1)
	short, cancel2 := context.WithTimeout(ctx, 1*time.Second)
	defer cancel2()
	if err := l.Ping(short, "h1-p1", p3.IP); err == nil {
		t.Error("h1-p1 reached h3-p1 without a route")
	}
}

// BenchmarkHostGWPodToPod measures TCP throughput pod to pod across two
// hosts over host-gw against the underlay (host to host over the same
// bridge) in the same run: iperf3 -A 0,1, 2 s each, alternating underlay
// and pod runs seven times. The ratio reported is the median of the seven
// ratios of adjacent runs, which cancels most of the drift of a shared
// machine's load. Run it with
//
//	go test -run '^$' -bench HostGWPodToPod -benchtime 1x ./test/e2e
func BenchmarkHostGWPodToPod(b *testing.B) {
	requireTool(b, "iperf3")
	l := upLab(b, lab.Spec{Hosts: 2, Pods: 1, Backend: "host-gw"})
	h1, _ := l.Host(1)
	h2, _ := l.Host(2)
	p1, _ := l.Pod(1, 1)
	p2, _ := l.Pod(2, 1)
	iperfServer(b, h2.Netns, 5201)
	iperfServer(b, p2.Netns, 5201)
	const (
		d      = 2 * time.Second
		rounds = 7
	)
	for i := 0; i < b.N; i++ {
		var ul, pod, ratio []float64
		for r := range rounds {
			// Alternate which path goes first so neither always runs on
			// the warmer machine.
			var u, p float64
			if r%2 == 0 {
				u = iperfGbps(b, h1.Netns, h2.UnderlayIP, 5201, d, "-A", "0,1")
				p = iperfGbps(b, p1.Netns, p2.IP, 5201, d, "-A", "0,1")
			} else {
				p = iperfGbps(b, p1.Netns, p2.IP, 5201, d, "-A", "0,1")
				u = iperfGbps(b, h1.Netns, h2.UnderlayIP, 5201, d, "-A", "0,1")
			}
			ul, pod, ratio = append(ul, u), append(pod, p), append(ratio, p/u)
		}
		b.Logf("underlay Gbit/s %.2f, pod->pod Gbit/s %.2f, ratios %.2f", ul, pod, ratio)
		b.ReportMetric(median(ul), "underlay-Gbit/s")
		b.ReportMetric(median(pod), "pod-Gbit/s")
		b.ReportMetric(median(ratio), "ratio")
	}
}

// TestHostGWPeerLeaseAddedAndDeleted: a lease written into etcd for a peer
// on the underlay (a synthetic one, 198.18.0.99) is routed by every host,
// and deleting it takes the route away everywhere, while every weftd keeps
// running.
func TestHostGWPeerLeaseAddedAndDeleted(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "host-gw"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := l.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	used := map[netip.Prefix]bool{}
	for i := 1; i <= 3; i++ {
		used[subnetOf(t, l, i)] = true
	}
	var peer netip.Prefix
	for third := 250; third > 0; third-- {
		if p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(third), 0}), 24); !used[p] {
			peer = p
			break
		}
	}
	gw := netip.MustParseAddr("198.18.0.99")
	synthetic := lease.Lease{Subnet: peer, Attrs: lease.Attrs{PublicIP: gw, BackendType: "host-gw"}}
	if err := st.PutLeases(ctx, []lease.Lease{synthetic}, 0); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		took := eventually(t, 5*time.Second, fmt.Sprintf("h%d routes the new peer %s", i, peer), func() bool {
			r, ok := hostRoutes(t, l, i)[peer]
			return ok && r.Gw.Equal(gw.AsSlice())
		})
		t.Logf("h%d: route to %s after %s", i, peer, took.Round(time.Millisecond))
	}
	if err := st.DeleteLease(ctx, peer); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		eventually(t, 5*time.Second, fmt.Sprintf("h%d drops the deleted peer %s", i, peer), func() bool {
			_, ok := hostRoutes(t, l, i)[peer]
			return !ok
		})
	}
	checkHostGWRoutes(t, l)
}
