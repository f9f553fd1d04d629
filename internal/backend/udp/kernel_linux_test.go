package udp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netnsutil"
)

// Kernel tests build, in fresh network namespaces, an underlay bridge with
// hosts on it and one pod behind each host (a routed veth), and run the
// backend in each host by calling Init, Start and Reconcile directly.

// nsPrefix starts the name of every namespace these tests create.
const nsPrefix = "wud-k"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, TUN devices and veths")
	}
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Namespace names are nsPrefix + <pid of the test process> + "x" + random:
// removeStale deletes those of test processes that no longer run (a crashed
// run), never those of a run still going.
func removeStale(t testing.TB) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "x")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil {
			continue
		}
		if pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z") {
			continue // alive
		}
		if err := exec.Command("ip", "netns", "del", e.Name()).Run(); err != nil {
			t.Logf("remove stale namespace %s: %v", e.Name(), err)
		}
	}
}

// lockedBuffer collects a backend's log for the test to read.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// testHost is a host namespace with its backend.
type testHost struct {
	name, pod string
	ns        netns.NsHandle
	nl        *netlink.Handle
	ip        netip.Addr
	subnet    netip.Prefix
	podIP     netip.Addr
	stateDir  string
	logs      *lockedBuffer
	b         *Backend
	ctx       context.Context
	cancel    context.CancelFunc
}

type topo struct {
	t      testing.TB
	sfx    string
	ul     string
	net    *config.Network
	hosts  []*testHost
	stray  string // a namespace on the underlay that is no peer
	strayI netip.Addr
}

func newTopo(t testing.TB, n int, backendJSON string) *topo {
	requireRoot(t)
	removeStale(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	sfx := strconv.Itoa(os.Getpid()) + "x" + hex.EncodeToString(rnd[:])
	tp := &topo{t: t, sfx: sfx, ul: nsPrefix + sfx + "-ul"}
	var err error
	tp.net, err = config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":` + backendJSON + `}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, h := range tp.hosts {
			if t.Failed() && h.logs != nil {
				t.Logf("%s backend log:\n%s", h.name, h.logs.String())
			}
			if h.cancel != nil {
				h.cancel()
				if h.b != nil && h.b.Done() != nil {
					<-h.b.Done()
				}
			}
			if h.nl != nil {
				h.nl.Close()
			}
			h.ns.Close()
			exec.Command("ip", "netns", "del", h.name).Run()
			exec.Command("ip", "netns", "del", h.pod).Run()
		}
		exec.Command("ip", "netns", "del", tp.ul).Run()
	})
	run(t, "ip", "netns", "add", tp.ul)
	run(t, "ip", "-n", tp.ul, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", tp.ul, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		h := &testHost{
			name:   fmt.Sprintf("%s%s-h%d", nsPrefix, sfx, i),
			pod:    fmt.Sprintf("%s%s-p%d", nsPrefix, sfx, i),
			ip:     netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}),
			subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			podIP:  netip.AddrFrom4([4]byte{10, 244, byte(i), 2}),
		}
		h.ns = netns.None()
		h.stateDir = t.TempDir()
		h.logs = &lockedBuffer{}
		tp.hosts = append(tp.hosts, h)
		run(t, "ip", "netns", "add", h.name)
		run(t, "ip", "netns", "add", h.pod)
		tp.attach(h.name, i, h.ip.String())
		run(t, "ip", "netns", "exec", h.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		run(t, "ip", "-n", h.name, "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", h.pod)
		run(t, "ip", "-n", h.name, "addr", "add", fmt.Sprintf("10.244.%d.1/24", i), "dev", "vp")
		run(t, "ip", "-n", h.name, "link", "set", "vp", "up")
		run(t, "ip", "-n", h.pod, "addr", "add", h.podIP.String()+"/24", "dev", "eth0")
		run(t, "ip", "-n", h.pod, "link", "set", "eth0", "up")
		run(t, "ip", "-n", h.pod, "link", "set", "lo", "up")
		run(t, "ip", "-n", h.pod, "route", "add", "default", "via", fmt.Sprintf("10.244.%d.1", i))
		if h.ns, err = netns.GetFromName(h.name); err != nil {
			t.Fatal(err)
		}
		if h.nl, err = netlink.NewHandleAt(h.ns); err != nil {
			t.Fatal(err)
		}
	}
	tp.strayI = netip.MustParseAddr("198.18.0.66")
	tp.stray = tp.addUnderlayNS("x", 99, tp.strayI.String())
	return tp
}

// addUnderlayNS adds a namespace with eth0 (addr/24) on the underlay bridge,
// removed with the topology.
func (tp *topo) addUnderlayNS(tag string, port int, addr string) string {
	t := tp.t
	ns := nsPrefix + tp.sfx + "-" + tag
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "netns", "add", ns)
	tp.attach(ns, port, addr)
	return ns
}

// attach connects ns to the underlay bridge with eth0 at addr/24.
func (tp *topo) attach(ns string, i int, addr string) {
	t := tp.t
	port := fmt.Sprintf("p%d", i)
	run(t, "ip", "-n", tp.ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(t, "ip", "-n", tp.ul, "link", "set", port, "master", "br0", "up")
	run(t, "ip", "-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
}

func (tp *topo) lease(h *testHost) lease.Lease {
	return lease.Lease{Subnet: h.subnet, Attrs: lease.Attrs{PublicIP: h.ip}, EtcdLease: 1, ModRevision: 1}
}

func (tp *topo) peersOf(h *testHost) []lease.Lease {
	var ps []lease.Lease
	for _, o := range tp.hosts {
		if o != h {
			ps = append(ps, tp.lease(o))
		}
	}
	return ps
}

// start runs a fresh backend in h, as a weftd would.
func (tp *topo) start(h *testHost) {
	tp.t.Helper()
	tp.initOnly(h)
	tp.finishStart(h)
}

// initOnly builds a fresh backend in h and calls Init.
func (tp *topo) initOnly(h *testHost) {
	t := tp.t
	t.Helper()
	link, err := h.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	host := backend.Host{
		Network:  tp.net,
		PublicIP: h.ip,
		Iface:    backend.Iface{Name: "eth0", Index: link.Attrs().Index, MTU: link.Attrs().MTU, Addr: h.ip},
		StateDir: h.stateDir,
		Netlink:  h.nl,
		NetNS:    h.ns,
		Log:      slog.New(slog.NewTextHandler(h.logs, nil)).With("host", h.name),
	}
	b, err := New(host, tp.net.Backend)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	local, err := b.Init(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if local.Type != "" || local.Data != nil || local.MTU != link.Attrs().MTU-28 && tp.net.Backend == nil {
		t.Errorf("Init published %+v, want BackendType \"\", no data", local)
	}
	h.b, h.cancel, h.ctx = b, cancel, ctx
}

// finishStart calls Start and Reconcile on h's backend.
func (tp *topo) finishStart(h *testHost) {
	t := tp.t
	t.Helper()
	if err := h.b.Start(h.ctx, tp.lease(h)); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Reconcile(h.ctx, tp.peersOf(h)); err != nil {
		t.Fatal(err)
	}
}

// stop ends h's backend as a stopping weftd would and waits for it.
func (tp *topo) stop(h *testHost) {
	h.cancel()
	select {
	case <-h.b.Done():
	case <-time.After(10 * time.Second):
		tp.t.Fatal("backend did not stop within 10 s")
	}
	h.cancel = nil
}

// ping runs ping in ns and returns its output and whether it succeeded.
func ping(ns string, dst netip.Addr, args ...string) (string, error) {
	a := append([]string{"netns", "exec", ns, "ping", "-n"}, args...)
	a = append(a, dst.String())
	out, err := exec.Command("ip", a...).CombinedOutput()
	return string(out), err
}

func requirePing(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (apt-get install iputils-ping)")
	}
}

// pingEventually pings once a second until a reply or the deadline.
func pingEventually(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := ping(ns, dst, "-c", "1", "-W", "1")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %s from %s: %v\n%s", dst, ns, err, out)
		}
	}
}

func TestKernelPodToPod(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 3, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	h1 := tp.hosts[0]
	link, err := h1.nl.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatalf("no %s device: %v", DefaultDevice, err)
	}
	if link.Attrs().MTU != 1500-28 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: MTU %d flags %v, want 1472 and up", DefaultDevice, link.Attrs().MTU, link.Attrs().Flags)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN || tt.NonPersist {
		t.Errorf("%s: %#v, want a persistent TUN device", DefaultDevice, link)
	} else if want := h1.b.queueCount() > 1; (tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0) != want {
		t.Errorf("%s: flags %v, want multi-queue %v", DefaultDevice, tt.Flags, want)
	}
	rs, err := h1.nl.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == "10.244.0.0/16" {
			found = true
		}
	}
	if !found {
		t.Errorf("no route for 10.244.0.0/16 via %s: %v", DefaultDevice, rs)
	}
	for _, a := range tp.hosts {
		for _, b := range tp.hosts {
			if a != b {
				pingEventually(t, a.pod, b.podIP)
			}
		}
	}
	// A per-peer route another backend left (proto 87, more specific than
	// the network route) goes at the next Reconcile; a foreign route and
	// Weft's routes inside this host's own subnet stay.
	run(t, "ip", "-n", h1.name, "route", "add", "10.244.2.0/24", "via", "198.18.0.12", "proto", "87")
	run(t, "ip", "-n", h1.name, "route", "add", "10.244.1.128/25", "dev", "vp", "proto", "87")
	run(t, "ip", "-n", h1.name, "route", "add", "10.244.3.0/25", "via", "198.18.0.13", "proto", "static")
	if err := h1.b.Reconcile(context.Background(), tp.peersOf(h1)); err != nil {
		t.Fatal(err)
	}
	routesNow := run(t, "ip", "-n", h1.name, "route", "show")
	for dst, want := range map[string]bool{"10.244.2.0/24": false, "10.244.1.128/25": true, "10.244.3.0/25": true, "10.244.0.0/16 dev " + DefaultDevice: true} {
		if got := strings.Contains(routesNow, dst); got != want {
			t.Errorf("route %s present: %v, want %v\n%s", dst, got, want, routesNow)
		}
	}
	run(t, "ip", "-n", h1.name, "route", "del", "10.244.3.0/25")
	// Reconciling again touches no route.
	mark := h1.logs.Len()
	if err := h1.b.Reconcile(context.Background(), tp.peersOf(h1)); err != nil {
		t.Fatal(err)
	}
	if after := h1.logs.String()[mark:]; strings.Contains(after, "route reconciled") {
		t.Errorf("a second Reconcile changed routes:\n%s", after)
	}
	// The host itself reaches a remote pod, from its TUN address.
	pingEventually(t, h1.name, tp.hosts[1].podIP)
	// Big packets are fragmented by the sender as the overlay MTU asks.
	if out, err := ping(h1.pod, tp.hosts[2].podIP, "-c", "2", "-i", "0.2", "-s", "4000", "-W", "2"); err != nil {
		t.Errorf("ping -s 4000: %v\n%s", err, out)
	}
	// TTL: the two hosts' kernels are the routers, the tunnel a link. A
	// pod on another host is three hops away (h1, h2, the pod); with a TTL
	// of 2 the packet expires in h2, whose kernel answers from its TUN
	// address, and the answer crosses the tunnel back.
	h2 := tp.hosts[1]
	if out, err := ping(h1.pod, h2.podIP, "-c", "1", "-W", "2", "-t", "3"); err != nil {
		t.Errorf("ping -t 3 to a pod on another host: %v\n%s", err, out)
	}
	out, _ := ping(h1.pod, h2.podIP, "-c", "1", "-W", "2", "-t", "2")
	if want := "From " + h2.subnet.Addr().String() + " icmp_seq=1 Time to live exceeded"; !strings.Contains(out, want) {
		t.Errorf("ping -t 2 to a pod on another host: want %q, got\n%s", want, out)
	}
	// A destination inside the network that no host holds.
	out, _ = ping(h1.pod, netip.MustParseAddr("10.244.99.9"), "-c", "1", "-W", "2")
	if want := "From " + h1.subnet.Addr().String() + " icmp_seq=1 Destination Net Unreachable"; !strings.Contains(out, want) {
		t.Errorf("ping to an unleased subnet: want Destination Net Unreachable, got\n%s", out)
	}
	if s := h1.b.Stats(); s.ICMPSent == 0 || s.TxDropped["no-peer"] == 0 {
		t.Errorf("stats after ping to an unleased subnet: %+v", s)
	}
}

// udpInner builds an IPv4/UDP packet (UDP checksum 0: none) as a peer
// would put it in a datagram.
func udpInner(src, dst netip.AddrPort, payload string) []byte {
	u := make([]byte, 8+len(payload))
	u[0], u[1] = byte(src.Port()>>8), byte(src.Port())
	u[2], u[3] = byte(dst.Port()>>8), byte(dst.Port())
	u[4], u[5] = byte(len(u)>>8), byte(len(u))
	copy(u[8:], payload)
	return ipv4Packet(src.Addr().String(), dst.Addr().String(), 64, 17, u)
}

// sendFrom sends one datagram holding payload from a socket opened in ns
// (bound to port, 0 for any) to dst.
func sendFrom(t *testing.T, ns string, port int, dst netip.AddrPort, payload []byte) {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = netnsutil.Do(h, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDPAddrPort(payload, dst)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// listenIn opens a UDP socket in ns bound to addr.
func listenIn(t *testing.T, ns string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var c *net.UDPConn
	if err := netnsutil.Do(h, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestKernelSpoofing sends datagrams to a host's UDP port from a namespace
// on the underlay that is no peer, and malformed or misaddressed ones from a
// peer: none reaches the pod, each is counted; a well-formed datagram from
// the peer does reach it. The peer here is simulated by a plain namespace
// (listed in the leases, running no backend) so that the test may send from
// port 8285 itself.
func TestKernelSpoofing(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	h1, h2 := tp.hosts[0], tp.hosts[1]
	pingEventually(t, h1.pod, h2.podIP) // the path works
	sim := tp.addUnderlayNS("s", 98, "198.18.0.77")
	simLease := lease.Lease{Subnet: netip.MustParsePrefix("10.244.77.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.18.0.77")}}
	if err := h2.b.Reconcile(context.Background(), append(tp.peersOf(h2), simLease)); err != nil {
		t.Fatal(err)
	}
	rx := listenIn(t, h2.pod, netip.AddrPortFrom(h2.podIP, 9999))
	to := netip.AddrPortFrom(h2.ip, DefaultPort)
	fromSim := netip.AddrPortFrom(netip.MustParseAddr("10.244.77.5"), 5555)
	dstPod2 := netip.AddrPortFrom(h2.podIP, 9999)

	before := h2.b.Stats()
	sendFrom(t, tp.stray, DefaultPort, to, udpInner(fromSim, dstPod2, "stranger"))
	sendFrom(t, tp.stray, DefaultPort, to, udpInner(netip.AddrPortFrom(h1.podIP, 1), dstPod2, "stranger2"))
	good := udpInner(fromSim, dstPod2, "peer")
	sendFrom(t, sim, DefaultPort+1, to, good)                                                         // not from the udp port
	sendFrom(t, sim, DefaultPort, to, good[:len(good)-1])                                             // truncated
	sendFrom(t, sim, DefaultPort, to, udpInner(netip.AddrPortFrom(h1.podIP, 5555), dstPod2, "h1's"))  // inner source of another peer
	sendFrom(t, sim, DefaultPort, to, udpInner(fromSim, netip.AddrPortFrom(h2.ip, 9999), "underlay")) // inner destination outside the subnet
	sendFrom(t, sim, DefaultPort, to, good)

	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := rx.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("the well-formed datagram from the peer did not arrive: %v", err)
	}
	if string(buf[:n]) != "peer" || from != fromSim {
		t.Fatalf("pod received %q from %s: a refused datagram got through", buf[:n], from)
	}
	// The refused datagrams were sent first; anything else arriving now
	// would be one of them.
	rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, from, err := rx.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("pod received %q from %s: a refused datagram got through", buf[:n], from)
	}
	after := h2.b.Stats()
	for reason, want := range map[string]uint64{"unknown-sender": 2, "sender-port": 1, "length": 1, "inner-src": 1, "inner-dst": 1} {
		if got := after.RxDropped[reason] - before.RxDropped[reason]; got != want {
			t.Errorf("RxDropped[%s] grew by %d, want %d (stats %+v)", reason, got, want, after)
		}
	}
}

// TestKernelRestart restarts one host's backend (a new Backend attaching to
// the same persistent TUN device, as a new weftd would) under a continuous
// ping between pods, and counts the pings lost.
func TestKernelRestart(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	h1, h2 := tp.hosts[0], tp.hosts[1]
	pingEventually(t, h1.pod, h2.podIP)
	const count = 400 // 4 s at 10 ms
	cmd := exec.Command("ip", "netns", "exec", h1.pod, "ping", "-n", "-q", "-i", "0.01", "-c", fmt.Sprint(count), "-W", "1", h2.podIP.String())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Let traffic flow, then restart h2's backend.
	deadline := time.Now().Add(5 * time.Second)
	for h2.b.Stats().RxPackets < 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	tp.stop(h2)
	if _, err := h2.nl.LinkByName(DefaultDevice); err != nil {
		t.Errorf("TUN device gone after the backend stopped: %v", err)
	}
	tp.start(h2)
	_ = cmd.Wait()
	sent, recv := parsePingSummary(out.String())
	if sent == 0 {
		t.Fatalf("no ping summary:\n%s", out.String())
	}
	loss := float64(sent-recv) / float64(sent)
	t.Logf("restart under ping -i 0.01: %d sent, %d received, %.2f%% lost", sent, recv, 100*loss)
	if loss >= 0.02 {
		t.Errorf("%.2f%% of pings lost across a restart, want < 2%%", 100*loss)
	}
	if h2.b.Stats().RxPackets == 0 {
		t.Error("the new backend received nothing")
	}
}

// TestKernelWarmStart: a restarted backend forwards to the peers its
// predecessor saved as soon as Init has attached to the TUN device, before
// Start and before it has heard of any lease.
func TestKernelWarmStart(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 3, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	h1, h2, h3 := tp.hosts[0], tp.hosts[1], tp.hosts[2]
	pingEventually(t, h2.pod, h1.podIP)
	tp.stop(h2)
	if out, err := ping(h2.pod, h1.podIP, "-c", "1", "-W", "1"); err == nil {
		t.Fatalf("ping works with no backend attached:\n%s", out)
	}
	tp.initOnly(h2)
	pingEventually(t, h2.pod, h1.podIP)
	pingEventually(t, h3.pod, h2.podIP)
	if s := h2.b.Stats(); s.TxDropped["no-peer"] > 0 || s.ICMPSent > 0 {
		t.Errorf("warm start dropped packets as unroutable: %+v", s)
	}
	tp.finishStart(h2)
	pingEventually(t, h2.pod, h1.podIP)
	// A state file for another network is ignored: forwarding then waits
	// for the first Reconcile.
	tp.stop(h2)
	if err := os.WriteFile(h2.stateDir+"/"+stateFile, []byte(`{"network":"10.9.0.0/16","own":"10.9.1.0/24","port":8285,"peers":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tp.initOnly(h2)
	if h2.b.Done() != nil {
		t.Error("a state saved for another network started the packet path")
	}
	tp.finishStart(h2)
	pingEventually(t, h2.pod, h1.podIP)
	// Garbage in the state file: ignored the same way.
	tp.stop(h2)
	if err := os.WriteFile(h2.stateDir+"/"+stateFile, []byte("{\x00not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	tp.initOnly(h2)
	if h2.b.Done() != nil {
		t.Error("a garbled state file started the packet path")
	}
	tp.finishStart(h2)
	pingEventually(t, h2.pod, h1.podIP)
}

// parsePingSummary reads "N packets transmitted, M received".
func parsePingSummary(out string) (sent, recv int) {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "packets transmitted") {
			fmt.Sscanf(strings.TrimSpace(line), "%d packets transmitted, %d received", &sent, &recv)
		}
	}
	return sent, recv
}

// TestKernelDeviceDeleted deletes the TUN device by hand: the next
// Reconcile recreates it with its address and route and restarts the
// packet path, and pods reach each other again.
func TestKernelDeviceDeleted(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	h1, h2 := tp.hosts[0], tp.hosts[1]
	pingEventually(t, h1.pod, h2.podIP)
	link, err := h1.nl.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.nl.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	if out, err := ping(h1.pod, h2.podIP, "-c", "1", "-W", "1"); err == nil {
		t.Fatalf("ping works without the TUN device:\n%s", out)
	}
	if err := h1.b.Reconcile(context.Background(), tp.peersOf(h1)); err != nil {
		t.Fatalf("Reconcile after the device was deleted: %v", err)
	}
	pingEventually(t, h1.pod, h2.podIP)
	pingEventually(t, h2.pod, h1.podIP)
	// A second Reconcile changes nothing.
	before, _ := h1.nl.LinkByName(DefaultDevice)
	if err := h1.b.Reconcile(context.Background(), tp.peersOf(h1)); err != nil {
		t.Fatal(err)
	}
	after, _ := h1.nl.LinkByName(DefaultDevice)
	if before == nil || after == nil || before.Attrs().Index != after.Attrs().Index {
		t.Errorf("second Reconcile replaced the device")
	}
}

// TestKernelAdoptsSingleQueueDevice: a persistent single-queue TUN device
// of the right name (an earlier weftd's, or made by hand) is attached as
// it is, not deleted under its traffic.
func TestKernelAdoptsSingleQueueDevice(t *testing.T) {
	requirePing(t)
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	h1, h2 := tp.hosts[0], tp.hosts[1]
	run(t, "ip", "-n", h1.name, "tuntap", "add", "dev", DefaultDevice, "mode", "tun")
	before, err := h1.nl.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range tp.hosts {
		tp.start(h)
	}
	pingEventually(t, h1.pod, h2.podIP)
	pingEventually(t, h2.pod, h1.podIP)
	after, err := h1.nl.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	if after.Attrs().Index != before.Attrs().Index {
		t.Errorf("the existing device was replaced (index %d, now %d)", before.Attrs().Index, after.Attrs().Index)
	}
}
