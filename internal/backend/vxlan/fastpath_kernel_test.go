package vxlan

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/config"
)

const fastNet = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","FastPath":true}}`

func TestFastPathOptions(t *testing.T) {
	for _, c := range []struct {
		opts, field string
	}{
		{`{"FastPath":true,"Mode":"reactive"}`, "Backend.FastPath"},
		{`{"FastPath":true,"DirectRouting":true}`, "Backend.FastPath"},
		{`{"FastPath":true,"Bridge":"a/b"}`, "Backend.Bridge"},
		{`{"FastPath":"yes"}`, "Backend.FastPath"},
	} {
		_, err := parseOptions([]byte(c.opts))
		var fe *config.FieldError
		if err == nil || (errors.As(err, &fe) && fe.Field != c.field) {
			t.Errorf("%s: error %v, want one naming %s", c.opts, err, c.field)
		}
	}
	s, err := parseOptions([]byte(`{"FastPath":true}`))
	if err != nil || !s.fastPath || s.bridge != "cni0" {
		t.Errorf("FastPath on: %+v, %v; want fastPath and bridge cni0", s, err)
	}
	if s, _ := parseOptions(nil); s.fastPath {
		t.Error("FastPath is on by default")
	}
}

// fastFilters returns Weft's fast path filters on the ingress of link name
// in host h.
func fastFilters(t *testing.T, h *host, name string) []*netlink.BpfFilter {
	t.Helper()
	l, err := h.handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := h.handle.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil // no ingress qdisc, so no filter
	}
	var ours []*netlink.BpfFilter
	for _, f := range fs {
		if _, o := isFastPathFilter(f); o != nil {
			ours = append(ours, o)
		}
	}
	return ours
}

// bridgeRx sends n echo requests from a's pod to addr and returns how many
// frames a's cni0 took in meanwhile (frames the bridge passed up to the
// host: the normal path's pod-to-remote packets; none on the fast path).
func bridgeRx(t *testing.T, a *host, addr netip.Addr, n int) uint64 {
	return bridgeCount(t, a, a, addr, n, false)
}

// bridgeCount sends n echo requests from a's pod to addr and returns how
// many frames m's cni0 took in (tx false) or sent (tx true) meanwhile.
func bridgeCount(t *testing.T, a, m *host, addr netip.Addr, n int, tx bool) uint64 {
	t.Helper()
	rx := func() uint64 {
		l, err := m.handle.LinkByName("cni0")
		if err != nil {
			t.Fatal(err)
		}
		if tx {
			return l.Attrs().Statistics.TxPackets
		}
		return l.Attrs().Statistics.RxPackets
	}
	before := rx()
	out, err := exec.Command("ip", "netns", "exec", a.pod, "ping", "-q", "-c", fmt.Sprint(n), "-i", "0.01", "-W", "1", addr.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ping %s: %v\n%s", addr, err, out)
	}
	return rx() - before
}

func TestFastPath(t *testing.T) {
	l := newLab(t, fastNet)
	for i := 1; i <= 2; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	h1, h2 := l.hosts[0], l.hosts[1]
	l.start(h1, "")
	l.start(h2, `{"Type":"vxlan"}`) // FastPath off on this host
	l.reconcileAll()
	l.allPairs()

	// On: one filter on the pod veth, Weft's program, direct action.
	fs := fastFilters(t, h1, "veth0")
	if len(fs) != 1 || fs[0].Id != h1.be.fast.id || !fs[0].DirectAction {
		t.Fatalf("host 1 veth0: fast path filters %+v, want one with program %d in direct action", fs, h1.be.fast.id)
	}
	// Off: nothing attached.
	if fs := fastFilters(t, h2, "veth0"); len(fs) != 0 {
		t.Fatalf("host 2 (FastPath off) veth0: filters %+v, want none", fs)
	}
	// The pod's packets to the other host skip the bridge.
	if n := bridgeRx(t, h1, h2.podIP, 20); n >= 5 {
		t.Errorf("FastPath on: cni0 took in %d frames during 20 echoes, want (almost) none", n)
	}
	if n := bridgeRx(t, h2, h1.podIP, 20); n < 20 {
		t.Errorf("FastPath off: cni0 took in %d frames during 20 echoes, want at least 20", n)
	}
	// The ingress half: once host 1 knows its pod (neighbour and FDB
	// entries, written by the pings above), the next Reconcile puts it in
	// the map, and packets from the other host reach the pod without
	// leaving through cni0.
	l.reconcileAll()
	if _, ok := h1.be.fast.pods[h1.podIP.As4()]; !ok {
		t.Fatalf("host 1 pod map %v lacks its pod %s", h1.be.fast.pods, h1.podIP)
	}
	if fs := fastFilters(t, h1, "flannel.1"); len(fs) != 1 || fs[0].Id != h1.be.fast.inID {
		t.Fatalf("host 1 flannel.1: filters %+v, want the ingress program %d", fs, h1.be.fast.inID)
	}
	if n := bridgeCount(t, h2, h1, h1.podIP, 20, true); n >= 5 {
		t.Errorf("ingress half: host 1's cni0 sent %d frames during 20 echoes from host 2, want (almost) none", n)
	}
	if n := bridgeCount(t, h1, h2, h2.podIP, 20, true); n < 20 {
		t.Errorf("FastPath off: host 2's cni0 sent %d frames during 20 echoes from host 1, want at least 20", n)
	}

	// Local traffic stays on the bridge: the host's own address answers.
	waitPing(t, h1, netip.MustParseAddr("10.244.1.1"), 3*time.Second)

	// Idempotent: a second Reconcile changes nothing.
	id := h1.be.fast.id
	l.reconcileAll()
	if fs := fastFilters(t, h1, "veth0"); len(fs) != 1 || fs[0].Id != id {
		t.Fatalf("after a second Reconcile: filters %+v, want the same one (program %d)", fs, id)
	}
	veth, _ := h1.handle.LinkByName("veth0")
	qs, _ := h1.handle.QdiscList(veth)
	clsact := 0
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_CLSACT {
			clsact++
		}
	}
	if clsact != 1 {
		t.Errorf("veth0 has %d ingress-side qdiscs, want 1: %v", clsact, qs)
	}

	// A veth enslaved later is found by the next Reconcile; a veth not on
	// the bridge is left alone.
	run(t, "ip", "-n", h1.ns, "link", "add", "vethnew", "type", "veth", "peer", "name", "vethother")
	run(t, "ip", "-n", h1.ns, "link", "set", "vethnew", "master", "cni0", "up")
	l.reconcileAll()
	if fs := fastFilters(t, h1, "vethnew"); len(fs) != 1 || fs[0].Id != id {
		t.Errorf("new bridge port: filters %+v, want Weft's program %d", fs, id)
	}
	if fs := fastFilters(t, h1, "vethother"); len(fs) != 0 {
		t.Errorf("veth outside the bridge: filters %+v, want none", fs)
	}

	// A filter someone else put at another priority is left alone, and a
	// restarted weftd replaces its old program instead of adding one.
	foreign, err := loadProg("foreign", []bpfInsn{insn(opMovK, 0, 0, 0, 0), insn(opExit, 0, 0, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(foreign) })
	if err := h1.handle.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: veth.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 7},
		Fd:          foreign, Name: "foreign", DirectAction: true,
	}); err != nil {
		t.Fatal(err)
	}
	l.start(h1, "")
	l.reconcileAll()
	fs = fastFilters(t, h1, "veth0")
	if len(fs) != 1 || fs[0].Id != h1.be.fast.id || fs[0].Id == id {
		t.Errorf("after restart: filters %+v, want one with the new program %d (old %d)", fs, h1.be.fast.id, id)
	}
	if all, _ := h1.handle.FilterList(veth, netlink.HANDLE_MIN_INGRESS); len(all) != 2 {
		t.Errorf("after restart: %d ingress filters on veth0, want 2 (Weft's and the foreign one)", len(all))
	}
	l.allPairs()

	// Turning FastPath off removes Weft's filters and only those.
	l.start(h1, `{"Type":"vxlan"}`)
	l.reconcileAll()
	if fs := append(fastFilters(t, h1, "veth0"), fastFilters(t, h1, "flannel.1")...); len(fs) != 0 {
		t.Errorf("FastPath turned off: filters %+v remain", fs)
	}
	if all, _ := h1.handle.FilterList(veth, netlink.HANDLE_MIN_INGRESS); len(all) != 1 {
		t.Errorf("FastPath turned off: %d ingress filters on veth0, want the foreign one", len(all))
	}
	l.allPairs()
	if n := bridgeRx(t, h1, h2.podIP, 20); n < 20 {
		t.Errorf("FastPath turned off: cni0 took in %d frames during 20 echoes, want at least 20", n)
	}
}
