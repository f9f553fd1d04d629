package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/netnsutil"
)

// TestCNILab: a 3-host lab whose pods were attached by the weft CNI plugin
// (through libcni) with weftd masquerading. Pods reach each other keeping
// their own addresses; a pod reaches the outside namespace, which sees the
// host's underlay address.
func TestCNILab(t *testing.T) {
	for _, backend := range []string{"host-gw", "vxlan"} {
		t.Run(backend, func(t *testing.T) { testCNILab(t, backend) })
	}
}

func testCNILab(t *testing.T, backend string) {
	requireBinaries(t)
	if bin.weft == "" {
		t.Fatal("the weft CNI plugin (cmd/weft) was not built")
	}
	masqArgs := map[int][]string{1: {"--ip-masq"}, 2: {"--ip-masq"}, 3: {"--ip-masq"}}
	att := lab.CNIAttacher{PluginDir: bin.dir}
	// Up waits until every pod reaches every other pod.
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 2, Backend: backend, HostArgs: masqArgs, Attacher: att, ResyncPeriod: time.Second})
	st := l.State()
	if len(st.Pods) != 6 {
		t.Fatalf("%d pods, want 6", len(st.Pods))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The pods are the plugin's: their allocations are on disk, and CHECK
	// through libcni confirms each attachment.
	for _, p := range st.Pods {
		h, err := l.Host(p.HostIndex)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(st.Dir, h.Name, "cni", lab.NetworkName, p.IP)); err != nil {
			t.Errorf("pod %s: no allocation file for %s: %v", p.Name, p.IP, err)
		}
		list, err := att.ConfList(st.Dir, h)
		if err != nil {
			t.Fatal(err)
		}
		cni := att.Runtime(st.Dir, h)
		if err := netnsutil.DoNamed(h.Netns, func() error { return cni.CheckNetworkList(ctx, list, lab.PodRuntimeConf(st.Name, p)) }); err != nil {
			t.Errorf("CNI CHECK of pod %s: %v", p.Name, err)
		}
	}
	m, err := l.Reachability(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !m.All() {
		t.Fatalf("pods cannot reach each other: %v", m.Missing())
	}

	// weftd --ip-masq put Weft's table in every host.
	for _, h := range st.Hosts {
		var rules []string
		if err := netnsutil.DoNamed(h.Netns, func() (err error) { rules, err = masq.Rules(); return err }); err != nil {
			t.Fatal(err)
		}
		if len(rules) == 0 {
			t.Errorf("host %s has no masquerade rules", h.Name)
		}
	}

	src, err := l.Pod(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	h1, _ := l.Host(1)
	outNS, outAddr := l.Outside()
	got, err := udpSource(src.Netns, outNS, outAddr)
	if err != nil {
		t.Fatalf("%v\n%s", err, diagnose(l, 1))
	}
	t.Logf("pod %s (%s) -> outside %s: the outside sees %s", src.Name, src.IP, outAddr, got)
	if got != netip.MustParseAddr(h1.UnderlayIP) {
		t.Errorf("pod %s to the outside: source %s, want host h1's underlay address %s", src.Name, got, h1.UnderlayIP)
	}
	for _, dst := range []struct{ host, pod int }{{2, 1}, {3, 2}, {1, 2}} {
		p, err := l.Pod(dst.host, dst.pod)
		if err != nil {
			t.Fatal(err)
		}
		got, err := udpSource(src.Netns, p.Netns, netip.MustParseAddr(p.IP))
		if err != nil {
			t.Fatalf("%v\n%s", err, diagnose(l, 1))
		}
		if got.String() != src.IP {
			t.Errorf("pod %s to pod %s: source %s, want the pod's own %s", src.Name, p.Name, got, src.IP)
		}
	}

	// Someone deletes Weft's table on h1: weftd puts it back (at the
	// latest on its next resync) and pod egress is masqueraded again.
	if err := netnsutil.DoNamed(h1.Netns, masq.Cleanup); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var rules []string
		if err := netnsutil.DoNamed(h1.Netns, func() (err error) { rules, err = masq.Rules(); return err }); err != nil {
			t.Fatal(err)
		}
		if len(rules) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("weftd did not restore the masquerade table on h1 within 10s (resync 1s): %q", rules)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got, err := udpSource(src.Netns, outNS, outAddr); err != nil || got != netip.MustParseAddr(h1.UnderlayIP) {
		t.Errorf("after the table was restored, the outside sees %s (%v), want %s", got, err, h1.UnderlayIP)
	}

	// DEL through libcni frees the address.
	victim, _ := l.Pod(2, 2)
	h2, _ := l.Host(2)
	if err := l.DetachPod(ctx, att, victim); err != nil {
		t.Fatalf("CNI DEL of %s: %v", victim.Name, err)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, h2.Name, "cni", lab.NetworkName, victim.IP)); !os.IsNotExist(err) {
		t.Errorf("allocation of %s still on disk after DEL (%v)", victim.IP, err)
	}
}

// udpSource sends a datagram from namespace from to dst (a socket opened in
// namespace to) and returns the source address the receiver saw.
func udpSource(from, to string, dst netip.Addr) (netip.Addr, error) {
	var conn *net.UDPConn
	if err := netnsutil.DoNamed(to, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: dst.AsSlice()})
		return err
	}); err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.UDPAddr).Port
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 16)
	// Resend until a datagram arrives: the first may be lost while the
	// path's neighbours resolve.
	for time.Now().Before(deadline) {
		if err := netnsutil.DoNamed(from, func() error {
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: dst.AsSlice(), Port: port})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("weft"))
			return err
		}); err != nil {
			return netip.Addr{}, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, src, err := conn.ReadFromUDPAddrPort(buf)
		if err == nil {
			return src.Addr().Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no datagram from %s reached %s in %s within 10s", from, dst, to)
}

// diagnose describes host i's datapath for a failure message: routes,
// neighbours, nftables, and the end of weftd's log.
func diagnose(l *lab.Lab, i int) string {
	h, err := l.Host(i)
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	for _, args := range [][]string{{"ip", "-d", "link"}, {"ip", "addr"}, {"ip", "route"}, {"ip", "neigh"}, {"nft", "list", "ruleset"}} {
		out, err := inNS(ctx, h.Netns, args...)
		fmt.Fprintf(&b, "--- %s: %s (%v)\n%s", h.Name, strings.Join(args, " "), err, out)
	}
	if log, err := os.ReadFile(h.Log); err == nil {
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		fmt.Fprintf(&b, "--- %s: weftd log (end)\n%s", h.Name, log)
	}
	return b.String()
}
