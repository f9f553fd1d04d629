package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/subnetenv"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and bridges")
	}
}

// Names of this package's test labs: "u<pid>x<n>", so that a later run can
// remove the labs of a run that died.
var unitLabRE = regexp.MustCompile(`^u([0-9]+)x[0-9]+$`)

// cleanStale removes the labs of dead test processes of this package.
func cleanStale(t *testing.T) {
	t.Helper()
	names, err := List()
	if err != nil {
		t.Fatal(err)
	}
	nss, _ := listNamed("weft-u")
	for _, n := range nss {
		if m := regexp.MustCompile(`^weft-(u[0-9]+x[0-9]+)-`).FindStringSubmatch(n); m != nil {
			names = append(names, m[1])
		}
	}
	for _, n := range names {
		m := unitLabRE.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); pid != os.Getpid() && !alive(pid) {
			if err := Down(n); err != nil {
				t.Logf("removing stale lab %s: %v", n, err)
			}
		}
	}
}

// TestUnderlaySegments builds the underlay alone (no etcd, no weftd): two
// hosts on segment 0 and one on segment 1 behind the router, resolving
// addresses with ARP and with static neighbours. Every host reaches the
// etcd's address and every other host; Down removes it all.
func TestUnderlaySegments(t *testing.T) {
	requireRoot(t)
	cleanStale(t)
	for k, mode := range []string{"arp", "static"} {
		t.Run(mode, func(t *testing.T) { testUnderlay(t, k+3, mode) })
	}
}

func testUnderlay(t *testing.T, n int, mode string) {
	spec := Spec{Name: fmt.Sprintf("u%dx%d", os.Getpid(), n), Hosts: 3, Backend: "host-gw", Segments: map[int]int{3: 1}, UnderlayNeighbours: mode}
	if err := spec.normalize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(spec.Name); err != nil {
			t.Error(err)
		}
		if left, _ := listNamed(nsPrefix(spec.Name)); len(left) > 0 {
			t.Errorf("Down left %v", left)
		}
	})
	set := newNSSet()
	defer set.close()
	if err := buildUnderlay(&spec, set); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	targets := []netip.Addr{etcdAddr.Addr()}
	for i := 1; i <= spec.Hosts; i++ {
		targets = append(targets, spec.underlayIP(i))
	}
	for i := 1; i <= spec.Hosts; i++ {
		for _, dst := range targets {
			if dst == spec.underlayIP(i) {
				continue
			}
			if err := pingUntil(ctx, hostNS(spec.Name, i), dst, 100*time.Millisecond); err != nil {
				t.Errorf("h%d -> %s: %v", i, dst, err)
			}
		}
	}
	// Segment 1 is not directly connected to segment 0: h1 has no
	// connected route to h3's address, only the one via the router.
	_, h1, err := set.open(hostNS(spec.Name, 1))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := h1.RouteGet(spec.underlayIP(3).AsSlice())
	if err != nil || len(rs) == 0 {
		t.Fatalf("route h1 -> h3: %v", err)
	}
	if !rs[0].Gw.Equal(routerAddr[0].Addr().AsSlice()) {
		t.Errorf("h1 reaches h3 via %v, want the router %s", rs[0].Gw, routerAddr[0].Addr())
	}
	neighs, err := h1.NeighList(0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	permanent := 0
	for _, nb := range neighs {
		if nb.State == netlink.NUD_PERMANENT {
			permanent++
		}
	}
	// h1's segment holds the etcd, the router and h2.
	if want := map[string]int{"arp": 0, "static": 3}[mode]; permanent != want {
		t.Errorf("%s: h1 has %d permanent neighbours, want %d", mode, permanent, want)
	}
}

// TestBridgeAttacher attaches two pods to one host with the lab's own
// netlink attacher and checks addresses, MTU and traffic between them and
// to the gateway.
func TestBridgeAttacher(t *testing.T) {
	requireRoot(t)
	cleanStale(t)
	spec := Spec{Name: fmt.Sprintf("u%dx2", os.Getpid()), Hosts: 1, Backend: "host-gw"}
	if err := spec.normalize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(spec.Name); err != nil {
			t.Error(err)
		}
	})
	set := newNSSet()
	defer set.close()
	if err := buildUnderlay(&spec, set); err != nil {
		t.Fatal(err)
	}
	env := subnetenv.New(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24"), 1400, false)
	host := HostState{Index: 1, Name: "h1", Netns: hostNS(spec.Name, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pods []PodState
	for j := 1; j <= 2; j++ {
		p := PodState{Name: podName(1, j), Netns: podNS(spec.Name, 1, j), Host: "h1", HostIndex: 1, Index: j}
		if _, _, err := set.create(p.Netns); err != nil {
			t.Fatal(err)
		}
		addr, err := BridgeAttacher{}.Attach(ctx, PodRequest{Lab: spec.Name, Host: host, Pod: p, Env: env})
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("10.244.1.%d", j+1); addr.String() != want {
			t.Errorf("pod %d: address %s, want %s", j, addr, want)
		}
		p.IP = addr.String()
		pods = append(pods, p)
		_, ph, _ := set.open(p.Netns)
		eth0, err := ph.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if eth0.Attrs().MTU != 1400 {
			t.Errorf("pod %d: MTU %d, want 1400", j, eth0.Attrs().MTU)
		}
	}
	if err := pingUntil(ctx, pods[0].Netns, env.Gateway(), 100*time.Millisecond); err != nil {
		t.Errorf("pod -> gateway: %v", err)
	}
	m, err := reachability(ctx, pods)
	if err != nil {
		t.Fatal(err)
	}
	if !m.All() {
		t.Errorf("pods on one host: %v", m.Missing())
	}
	// A pod index beyond the subnet is refused, not wrapped around.
	p := PodState{Name: "h1-p300", Netns: podNS(spec.Name, 1, 300), Index: 300}
	if _, _, err := set.create(p.Netns); err != nil {
		t.Fatal(err)
	}
	if _, err := (BridgeAttacher{}).Attach(ctx, PodRequest{Lab: spec.Name, Host: host, Pod: p, Env: env}); err == nil {
		t.Error("pod 300 attached in a /24")
	}
}
