package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// This file is an experiment, not product code: it measures how much of
// the pod path's cost tc eBPF redirects could take away (the way past the
// ~0.9 the kernel's own knobs reach, per FACTS.md). Two tiny programs per
// host, written as raw BPF instructions (no compiler, no library):
//
//   - on the pod's host-side veth, ingress: IPv4 to another host's pod
//     subnet → bpf_redirect_neigh(flannel.1): skips the cni0 bridge, IP
//     forwarding and netfilter on the way out;
//   - on flannel.1, ingress (after decapsulation): IPv4 to the local pod →
//     rewrite the Ethernet header, bpf_redirect_peer(pod veth): the packet
//     lands in the pod's namespace directly, skipping forwarding, the
//     bridge and the veth's backlog.
//
// The product version is the backend's FastPath option (fastpath_linux.go),
// which shares the assembler (bpf_linux.go) and the first program, and
// replaces the second by one reading a map of local pods; here each host
// has one pod, so the values are constants in the program.

// progToPod delivers IPv4 packets for pod straight into the pod's
// namespace through its veth peer, with the pod's MAC as destination.
func progToPod(pod netip.Addr, podMAC, gwMAC net.HardwareAddr, veth int) []bpfInsn {
	a := pod.As4()
	return []bpfInsn{
		insn(opMovX, 6, 1, 0, 0),
		insn(opLdxW, 2, 6, skbData, 0),
		insn(opLdxW, 3, 6, skbDataEnd, 0),
		insn(opMovX, 4, 2, 0, 0),
		insn(opAddK, 4, 0, 0, 34),
		insn(opJgtX, 4, 3, 12, 0), // → pass
		insn(opLdxH, 5, 2, 12, 0),
		insn(opJneK, 5, 0, 10, 0x0008),
		insn(opLdxW, 5, 2, 30, 0),
		insn(opJne32K, 5, 0, 8, le(a[:])),
		insn(opStW, 2, 0, 0, le(podMAC[0:4])),
		insn(opStH, 2, 0, 4, le(podMAC[4:6])),
		insn(opStH, 2, 0, 6, le(gwMAC[0:2])),
		insn(opStW, 2, 0, 8, le(gwMAC[2:6])),
		insn(opMovK, 1, 0, 0, int32(veth)),
		insn(opMovK, 2, 0, 0, 0),
		insn(opCall, 0, 0, 0, fnRedirectPeer),
		insn(opExit, 0, 0, 0, 0),
		insn(opMovK, 0, 0, 0, 0),
		insn(opExit, 0, 0, 0, 0),
	}
}

// attachIngress attaches prog to link's tc ingress (clsact, direct action).
func attachIngress(h *netlink.Handle, link netlink.Link, prog int) error {
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := h.QdiscReplace(q); err != nil {
		return fmt.Errorf("clsact on %s: %w", link.Attrs().Name, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd:           prog,
		Name:         "wvx",
		DirectAction: true,
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("bpf filter on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

func detachIngress(h *netlink.Handle, link netlink.Link) error {
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	return h.QdiscDel(q)
}

// BenchmarkKernelPodToPodRedirect compares, in one run, pod-to-pod TCP
// over Weft's VXLAN device with and without the tc eBPF redirects, each
// against the underlay measured just before (iperf3 -A 0,1, 4 s, five
// rounds, medians of the pair ratios; also iperf3's CPU per Gbit/s).
// Run:
//
//	go test -run '^$' -bench KernelPodToPodRedirect -benchtime 1x -v ./internal/backend/vxlan
func BenchmarkKernelPodToPodRedirect(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is not installed")
	}
	l := newLab(b, testNet)
	for i := 1; i <= 2; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	type att struct {
		h          *host
		veth, tunl netlink.Link
		out, in    int
	}
	var atts []att
	for _, h := range l.hosts {
		run(b, "ip", "-n", h.pod, "link", "set", "eth0", "mtu", fmt.Sprint(h.local.MTU))
		veth, err := h.handle.LinkByName("veth0")
		if err != nil {
			b.Fatal(err)
		}
		tunl, _ := h.handle.LinkByName("flannel.1")
		podMAC := podHWAddr(b, h)
		out, err := loadProg("wvx_redirect", progToTunnel(l.netCfg.Network, h.subnet, tunl.Attrs().Index))
		if err != nil {
			b.Fatal(err)
		}
		in, err := loadProg("wvx_redirect", progToPod(h.podIP, podMAC, veth.Attrs().HardwareAddr, veth.Attrs().Index))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { unix.Close(out); unix.Close(in) })
		atts = append(atts, att{h, veth, tunl, out, in})
	}
	attach := func(on bool) {
		for _, a := range atts {
			if on {
				if err := attachIngress(a.h.handle, a.veth, a.out); err != nil {
					b.Fatal(err)
				}
				if err := attachIngress(a.h.handle, a.tunl, a.in); err != nil {
					b.Fatal(err)
				}
			} else {
				_ = detachIngress(a.h.handle, a.veth)
				_ = detachIngress(a.h.handle, a.tunl)
			}
		}
	}
	h1, h2 := l.hosts[0], l.hosts[1]
	for _, ns := range []string{h2.ns, h2.pod} {
		srv := exec.Command("ip", "netns", "exec", ns, "iperf3", "-s", "-p", "5201")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	attach(true)
	waitPing(b, h1, h2.podIP, 5*time.Second)
	attach(false)
	waitPing(b, h1, h2.podIP, 5*time.Second)
	time.Sleep(300 * time.Millisecond) // let the iperf3 servers listen
	for i := 0; i < b.N; i++ {
		var plain, redir, plainCost, redirCost []float64
		for range 5 {
			u := iperfJ(b, h1.ns, h2.public.String())
			p := iperfJ(b, h1.pod, h2.podIP.String())
			attach(true)
			r := iperfJ(b, h1.pod, h2.podIP.String())
			attach(false)
			plain, redir = append(plain, p.gbps/u.gbps), append(redir, r.gbps/u.gbps)
			plainCost, redirCost = append(plainCost, u.cost()/p.cost()), append(redirCost, u.cost()/r.cost())
			b.Logf("underlay %.2f, pod %.2f, pod with redirects %.2f Gbit/s", u.gbps, p.gbps, r.gbps)
		}
		med := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }
		b.Logf("ratios plain %.3f redirect %.3f; cost ratios plain %.3f redirect %.3f", plain, redir, plainCost, redirCost)
		b.ReportMetric(med(plain), "ratio-plain")
		b.ReportMetric(med(redir), "ratio-redirect")
		b.ReportMetric(med(plainCost), "cost-ratio-plain")
		b.ReportMetric(med(redirCost), "cost-ratio-redirect")
	}
}

func podHWAddr(b *testing.B, h *host) net.HardwareAddr {
	b.Helper()
	ns, err := netnsFromName(h.pod)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	ph, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer ph.Close()
	l, err := ph.LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

type iperfOut struct{ gbps, cpu float64 }

// cost is CPU percent (sender + receiver) per Gbit/s.
func (r iperfOut) cost() float64 { return r.cpu / r.gbps }

func iperfJ(b *testing.B, ns, dst string) iperfOut {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []byte
	var err error
	for try := 0; try < 20; try++ {
		// The server takes a moment to finish the previous test.
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", ns, "iperf3", "-c", dst, "-p", "5201", "-t", "4", "-A", "0,1", "-J").Output()
		if err == nil || !strings.Contains(string(out), "server is busy") {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		b.Fatalf("iperf3 %s -> %s: %v\n%s", ns, dst, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			CPU struct {
				Host   float64 `json:"host_total"`
				Remote float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.BitsPerSecond <= 0 {
		b.Fatalf("iperf3: %v %s", err, out)
	}
	return iperfOut{res.End.SumReceived.BitsPerSecond / 1e9, res.End.CPU.Host + res.End.CPU.Remote}
}

func netnsFromName(name string) (netns.NsHandle, error) { return netns.GetFromName(name) }
