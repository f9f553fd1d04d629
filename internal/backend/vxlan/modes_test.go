package vxlan

import (
	"context"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const reactiveNet = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Mode":"reactive"}}`

func TestReactiveThreeHosts(t *testing.T) {
	l := threeHosts(t, reactiveNet)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	link, err := h1.handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	v := link.(*netlink.Vxlan)
	if !v.L2miss || !v.L3miss || !v.Proxy {
		t.Errorf("reactive device: l2miss %v l3miss %v proxy %v, want all on", v.L2miss, v.L3miss, v.Proxy)
	}
	// Only one route for the overlay, and no entries before any traffic.
	rs, _ := h1.handle.RouteList(link, unix.AF_INET)
	var overlay int
	for _, r := range rs {
		if r.Protocol == 87 {
			overlay++
			if r.Dst.String() != "10.244.0.0/16" {
				t.Errorf("unexpected route %v", r)
			}
		}
	}
	if overlay != 1 {
		t.Errorf("%d Weft routes on the device, want 1 (the overlay)", overlay)
	}
	if n := countEntries(t, h1, link.Attrs().Index); n != 0 {
		t.Errorf("%d neighbour/FDB entries before traffic, want 0", n)
	}

	// The first packets to a new peer are answered within 5 ms of the miss:
	// the first echo's round trip exceeds the steady one by less than that.
	first, steady := pingRTTs(t, h1, h2.podIP)
	t.Logf("first RTT %v, steady RTT %v", first, steady)
	if first-steady > 5*time.Millisecond {
		t.Errorf("first packet took %v more than steady state, want < 5ms", first-steady)
	}
	// h1 talked to h2 only: entries for h2, none for h3.
	neighs, _ := h1.handle.NeighList(link.Attrs().Index, unix.AF_INET)
	for _, n := range neighs {
		if p := ipOf(n.IP); l.hosts[2].subnet.Contains(p) {
			t.Errorf("entry for host 3 without traffic: %v", n)
		}
		if n.State == netlink.NUD_PERMANENT {
			t.Errorf("permanent neighbour in reactive mode: %v", n)
		}
	}
	l.allPairs()

	// Reconcile keeps answered entries of live peers.
	l.reconcileAll()
	if n := countEntries(t, h1, link.Attrs().Index); n == 0 {
		t.Error("reconcile removed live reactive entries")
	}
	// A departed peer's entries go.
	if err := h1.be.Reconcile(context.Background(), l.leases()[:1]); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, h1, link.Attrs().Index); n != 0 {
		t.Errorf("%d entries left after every peer left", n)
	}
}

func TestMixedStaticAndReactive(t *testing.T) {
	l := threeHosts(t, testNet)
	l.start(l.hosts[0], "")
	l.start(l.hosts[1], `{"Type":"vxlan","Mode":"reactive"}`)
	l.start(l.hosts[2], "")
	l.reconcileAll()
	l.allPairs()
}

func TestDirectRouting(t *testing.T) {
	l := newLab(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	// Segment A (br0): hosts 1 and 2; segment B (br1): host 3. The underlay
	// namespace routes between them.
	run(t, "ip", "-n", l.ul, "link", "add", "br1", "type", "bridge")
	run(t, "ip", "-n", l.ul, "link", "set", "br1", "up")
	run(t, "ip", "-n", l.ul, "addr", "add", "198.18.0.1/24", "dev", "br0")
	run(t, "ip", "-n", l.ul, "addr", "add", "198.18.1.1/24", "dev", "br1")
	run(t, "ip", "netns", "exec", l.ul, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	gwA, gwB := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.1.1")
	l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), gwA)
	l.addHost("br0", netip.MustParsePrefix("198.18.0.12/24"), gwA)
	l.addHost("br1", netip.MustParsePrefix("198.18.1.13/24"), gwB)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	l.allPairs()
	h1 := l.hosts[0]
	rs, _ := h1.handle.RouteList(nil, unix.AF_INET)
	got := map[string]string{}
	for _, r := range rs {
		if r.Protocol == 87 && r.Dst != nil {
			dev, _ := h1.handle.LinkByIndex(r.LinkIndex)
			got[r.Dst.String()] = r.Gw.String() + " " + dev.Attrs().Name
		}
	}
	want := map[string]string{"10.244.2.0/24": "198.18.0.12 eth0", "10.244.3.0/24": "10.244.3.0 flannel.1"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("route %s: %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	// No tunnel entries for the direct peer.
	link, _ := h1.handle.LinkByName("flannel.1")
	fdb, _ := h1.handle.NeighList(link.Attrs().Index, unix.AF_BRIDGE)
	for _, f := range fdb {
		if f.HardwareAddr.String() == l.hosts[1].be.VtepMAC() {
			t.Errorf("FDB entry for the directly routed peer: %v", f)
		}
	}
}

func TestRestartLosesNothing(t *testing.T) {
	for _, mode := range []string{testNet, reactiveNet} {
		l := threeHosts(t, mode)
		for _, h := range l.hosts {
			l.start(h, "")
		}
		l.reconcileAll()
		l.allPairs()
		h1, h2 := l.hosts[0], l.hosts[1]
		cmd := exec.Command("ip", "netns", "exec", h1.pod, "ping", "-q", "-c", "200", "-i", "0.005", "-W", "1", h2.podIP.String())
		out := make(chan []byte, 1)
		go func() { b, _ := cmd.CombinedOutput(); out <- b }()
		time.Sleep(200 * time.Millisecond) // let the stream run before the restart
		for _, h := range l.hosts[:2] {
			l.start(h, "")
		}
		l.reconcileAll()
		res := string(<-out)
		if !regexp.MustCompile(`200 packets transmitted, 200 received`).MatchString(res) {
			t.Errorf("packets lost across a restart (%s):\n%s", mode, res)
		}
	}
}

// countEntries counts FDB and neighbour entries with a link-layer address
// on the device.
func countEntries(t *testing.T, h *host, idx int) int {
	t.Helper()
	n := 0
	for _, fam := range []int{unix.AF_INET, unix.AF_BRIDGE} {
		es, err := h.handle.NeighList(idx, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if _, err := toHwAddr(e.HardwareAddr); err == nil && e.LinkIndex == idx {
				n++
			}
		}
	}
	return n
}

var rttRE = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingRTTs sends 5 echoes 50 ms apart and returns the first round trip and
// the median of the others.
func pingRTTs(t testing.TB, from *host, to netip.Addr) (first, steady time.Duration) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", from.pod, "ping", "-c", "5", "-i", "0.05", "-W", "1", to.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	var rtts []time.Duration
	for _, m := range rttRE.FindAllStringSubmatch(string(out), -1) {
		f, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, time.Duration(f*float64(time.Millisecond)))
	}
	if len(rtts) != 5 {
		t.Fatalf("want 5 replies:\n%s", out)
	}
	rest := append([]time.Duration(nil), rtts[1:]...)
	sort.Slice(rest, func(i, j int) bool { return rest[i] < rest[j] })
	return rtts[0], rest[len(rest)/2]
}

func TestReactiveEntriesRefreshedAndExpired(t *testing.T) {
	l := threeHosts(t, reactiveNet)
	for _, h := range l.hosts[:2] {
		l.start(h, "")
	}
	l.reconcileAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	// Make entries go stale fast, so the test sees the kernel re-confirm
	// entries in use (application probes answered by Weft).
	for _, h := range l.hosts[:2] {
		run(t, "ip", "netns", "exec", h.ns, "sysctl", "-qw",
			"net.ipv4.neigh.flannel/1.base_reachable_time_ms=200", "net.ipv4.neigh.flannel/1.delay_first_probe_time=1")
	}
	out, err := exec.Command("ip", "netns", "exec", h1.pod, "ping", "-q", "-c", "400", "-i", "0.01", "-W", "1", h2.podIP.String()).CombinedOutput()
	if err != nil || !regexp.MustCompile(`400 packets transmitted, 400 received`).Match(out) {
		t.Fatalf("packets lost while entries were re-confirmed: %v\n%s", err, out)
	}
	// Unused entries are removed once idle.
	h1.be.idle = 500 * time.Millisecond
	link, _ := h1.handle.LinkByName("flannel.1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := h1.be.Reconcile(context.Background(), l.leases()); err != nil {
			t.Fatal(err)
		}
		neighs, _ := h1.handle.NeighList(link.Attrs().Index, unix.AF_INET)
		left := 0
		for _, n := range neighs {
			if _, err := toHwAddr(n.HardwareAddr); err == nil {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unused reactive neighbours not expired: %v", neighs)
		}
		time.Sleep(100 * time.Millisecond) // polling interval of the kernel's own timers
	}
	waitPing(t, h1, h2.podIP, 3*time.Second)
}
