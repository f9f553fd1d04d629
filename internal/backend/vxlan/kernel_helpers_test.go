package vxlan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// nsPrefix is this package's namespace prefix for kernel tests.
const nsPrefix = "wvx-u"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, VXLAN devices and routes")
	}
}

// cleanStale removes namespaces with this package's prefix left by a
// crashed run.
func cleanStale(t testing.TB) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// run runs a setup command (tests only; product code speaks netlink).
func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// lab is a set of hosts in namespaces: each host has eth0 on an underlay
// bridge and one pod behind a cni0 bridge.
type lab struct {
	t      testing.TB
	id     string
	ul     string
	hosts  []*host
	netCfg *config.Network
}

type host struct {
	i      int
	ns     string
	pod    string
	public netip.Addr
	subnet netip.Prefix
	podIP  netip.Addr
	handle *netlink.Handle
	nsh    netns.NsHandle
	state  string
	be     *Backend
	local  backend.Local
	cancel context.CancelFunc
}

func newLab(t testing.TB, netJSON string) *lab {
	t.Helper()
	requireRoot(t)
	cleanStale(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := nsPrefix + hex.EncodeToString(b)
	cfg, err := config.Parse([]byte(netJSON))
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, id: id, ul: id + "-ul", netCfg: cfg}
	run(t, "ip", "netns", "add", l.ul)
	t.Cleanup(l.close)
	run(t, "ip", "-n", l.ul, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.ul, "link", "set", "br0", "up")
	return l
}

func (l *lab) close() {
	for _, h := range l.hosts {
		if h.cancel != nil {
			h.cancel()
		}
		if h.handle != nil {
			h.handle.Close()
		}
		h.nsh.Close()
		_ = exec.Command("ip", "netns", "del", h.pod).Run()
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", l.ul).Run()
}

// addHost creates host i on the underlay bridge br (in the underlay
// namespace) with address pub/len, a pod, and a default route via gw if
// valid.
func (l *lab) addHost(br string, pub netip.Prefix, gw netip.Addr) *host {
	t := l.t
	t.Helper()
	i := len(l.hosts) + 1
	h := &host{
		i:      i,
		ns:     fmt.Sprintf("%s-h%d", l.id, i),
		pod:    fmt.Sprintf("%s-h%d-p", l.id, i),
		public: pub.Addr(),
		subnet: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
		podIP:  netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i)),
		nsh:    netns.None(),
	}
	l.hosts = append(l.hosts, h)
	run(t, "ip", "netns", "add", h.ns)
	run(t, "ip", "netns", "add", h.pod)
	peer := fmt.Sprintf("v%d", i)
	run(t, "ip", "-n", h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", l.ul)
	run(t, "ip", "-n", l.ul, "link", "set", peer, "master", br, "up")
	run(t, "ip", "-n", h.ns, "addr", "add", pub.String(), "dev", "eth0")
	run(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
	if gw.IsValid() {
		run(t, "ip", "-n", h.ns, "route", "add", "default", "via", gw.String())
	}
	run(t, "ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "-n", h.ns, "link", "add", "cni0", "type", "bridge")
	run(t, "ip", "-n", h.ns, "addr", "add", fmt.Sprintf("10.244.%d.1/24", i), "dev", "cni0")
	run(t, "ip", "-n", h.ns, "link", "set", "cni0", "up")
	run(t, "ip", "-n", h.ns, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", h.pod)
	run(t, "ip", "-n", h.ns, "link", "set", "veth0", "master", "cni0", "up")
	run(t, "ip", "-n", h.pod, "addr", "add", h.podIP.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", h.pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", h.pod, "link", "set", "lo", "up")
	run(t, "ip", "-n", h.pod, "route", "add", "default", "via", fmt.Sprintf("10.244.%d.1", i))
	var err error
	if h.nsh, err = netns.GetFromName(h.ns); err != nil {
		t.Fatal(err)
	}
	if h.handle, err = netlink.NewHandleAt(h.nsh); err != nil {
		t.Fatal(err)
	}
	h.state = filepath.Join(t.TempDir(), "state")
	return h
}

func (l *lab) backendHost(h *host) backend.Host {
	t := l.t
	t.Helper()
	eth, err := h.handle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return backend.Host{
		Network:  l.netCfg,
		PublicIP: h.public,
		Iface:    backend.Iface{Name: "eth0", Index: eth.Attrs().Index, MTU: eth.Attrs().MTU, Addr: h.public},
		StateDir: h.state,
		Netlink:  h.handle,
		NetNS:    h.nsh,
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", h.i),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// start runs Init and Start on host h with the backend options opts
// (the network's Backend object when empty).
func (l *lab) start(h *host, opts string) {
	t := l.t
	t.Helper()
	if opts == "" {
		opts = string(l.netCfg.Backend)
	}
	be, err := New(l.backendHost(h), []byte(opts))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if h.cancel != nil {
		h.cancel()
	}
	h.cancel = cancel
	local, err := be.Init(ctx)
	if err != nil {
		t.Fatalf("host %d Init: %v", h.i, err)
	}
	h.be, h.local = be, local
	if err := be.Start(ctx, h.lease()); err != nil {
		t.Fatalf("host %d Start: %v", h.i, err)
	}
}

func (h *host) lease() lease.Lease {
	return lease.Lease{Subnet: h.subnet, Attrs: lease.Attrs{PublicIP: h.public, BackendType: h.local.Type, BackendData: h.local.Data}}
}

func (l *lab) leases() []lease.Lease {
	var ls []lease.Lease
	for _, h := range l.hosts {
		if h.be != nil {
			ls = append(ls, h.lease())
		}
	}
	return ls
}

// reconcileAll reconciles every host with all leases and fails on error.
func (l *lab) reconcileAll() {
	l.t.Helper()
	ls := l.leases()
	for _, h := range l.hosts {
		if h.be == nil {
			continue
		}
		if err := h.be.Reconcile(context.Background(), ls); err != nil {
			l.t.Fatalf("host %d Reconcile: %v", h.i, err)
		}
	}
}

// ping sends one echo request from the pod of a to addr and reports
// whether a reply came back.
func ping(a *host, addr netip.Addr) bool {
	return exec.Command("ip", "netns", "exec", a.pod, "ping", "-c", "1", "-W", "1", addr.String()).Run() == nil
}

// waitPing polls until a ping from a's pod to addr succeeds.
func waitPing(t testing.TB, a *host, addr netip.Addr, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ping(a, addr) {
		if time.Now().After(deadline) {
			t.Fatalf("pod of host %d cannot reach %s within %v", a.i, addr, within)
		}
	}
}

// allPairs checks pod-to-pod reachability in every direction.
func (l *lab) allPairs() {
	l.t.Helper()
	for _, a := range l.hosts {
		for _, b := range l.hosts {
			if a != b {
				waitPing(l.t, a, b.podIP, 3*time.Second)
			}
		}
	}
}
