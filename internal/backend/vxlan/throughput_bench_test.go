package vxlan

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkKernelPodToPod measures TCP throughput between pods behind a
// cni0 bridge on two hosts over Weft's VXLAN device, against the underlay
// between the same hosts, in the same run (iperf3 -A 0,1, 4 s, five pairs
// back to back, median of the pair ratios). The backend is driven directly
// (no weftd, no CNI plugin), so this isolates the device and its entries.
// With WEFT_BENCH_FASTPATH=1 every round also measures the pods with the
// backend's FastPath on (both hosts restarted with "FastPath": true, then
// back off), reporting its ratio against the underlay and against the
// normal path of the same round. Run:
//
//	go test -run '^$' -bench 'KernelPodToPod$' -benchtime 1x -v ./internal/backend/vxlan
//	WEFT_BENCH_FASTPATH=1 go test -run '^$' -bench 'KernelPodToPod$' -benchtime 1x -v ./internal/backend/vxlan
func BenchmarkKernelPodToPod(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is not installed")
	}
	fast := os.Getenv("WEFT_BENCH_FASTPATH") == "1"
	l := newLab(b, testNet)
	for i := 1; i <= 2; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	// Pods get the overlay MTU, as the CNI plugin gives them.
	for _, h := range l.hosts {
		run(b, "ip", "-n", h.pod, "link", "set", "eth0", "mtu", strconv.Itoa(h.local.MTU))
	}
	for _, ns := range []string{h2.ns, h2.pod} {
		srv := exec.Command("ip", "netns", "exec", ns, "iperf3", "-s", "-p", "5201")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	setFast := func(on bool) {
		opts := `{"Type":"vxlan"}`
		if on {
			opts = `{"Type":"vxlan","FastPath":true}`
		}
		for _, h := range l.hosts {
			l.start(h, opts)
		}
		l.reconcileAll()
		if on && (h1.be.fast.off || h2.be.fast.inOff) {
			b.Fatal("the kernel refused the fast path programs")
		}
		if _, ok := h2.be.fast.pods[h2.podIP.As4()]; on && !ok {
			b.Fatal("host 2's pod map lacks its pod: the ingress half would not be measured")
		}
	}
	waitPing(b, h1, h2.podIP, 5*time.Second)
	time.Sleep(300 * time.Millisecond) // iperf3 servers start listening; nothing to poll from here cheaply
	for i := 0; i < b.N; i++ {
		var ratios, fratios, fvsplain, ul, pod, fpod []float64
		for range 5 {
			u := iperfJ(b, h1.ns, h2.public.String()).gbps
			p := iperfJ(b, h1.pod, h2.podIP.String()).gbps
			ul, pod, ratios = append(ul, u), append(pod, p), append(ratios, p/u)
			if fast {
				setFast(true)
				f := iperfJ(b, h1.pod, h2.podIP.String()).gbps
				setFast(false)
				fpod, fratios, fvsplain = append(fpod, f), append(fratios, f/u), append(fvsplain, f/p)
			}
		}
		med := func(x []float64) float64 { x = slices.Clone(x); slices.Sort(x); return x[len(x)/2] }
		b.Logf("underlay %.2f, pod %.2f Gbit/s; pair ratios %.3f", ul, pod, ratios)
		b.ReportMetric(med(ratios), "ratio")
		if fast {
			b.Logf("pod with FastPath %.2f Gbit/s; ratios to underlay %.3f; to the normal path %.3f", fpod, fratios, fvsplain)
			b.ReportMetric(med(fratios), "ratio-fastpath")
			b.ReportMetric(med(fvsplain), "fastpath/normal")
		}
	}
}

func iperf(b *testing.B, ns, dst string) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "iperf3", "-c", dst, "-p", "5201", "-t", "4", "-A", "0,1", "-J").Output()
	if err != nil {
		b.Fatalf("iperf3 %s -> %s: %v", ns, dst, err)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatal(err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// BenchmarkKernelDeviceAB compares, in one run, pod-to-pod TCP through the
// VXLAN device and entries Weft makes with the same built by hand the way
// flannel's documentation does (`ip link add … type vxlan`, `ip neigh`,
// `bridge fdb`, `ip route`), alternating, five rounds: any difference is
// Weft's. Run:
//
//	go test -run '^$' -bench KernelDeviceAB -benchtime 1x -v ./internal/backend/vxlan
func BenchmarkKernelDeviceAB(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is not installed")
	}
	l := newLab(b, testNet)
	for i := 1; i <= 2; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	for _, h := range l.hosts {
		l.start(h, "")
		run(b, "ip", "-n", h.pod, "link", "set", "eth0", "mtu", strconv.Itoa(h.local.MTU))
	}
	l.reconcileAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	handBuilt := func() {
		for _, h := range l.hosts {
			peer := l.hosts[2-h.i]
			run(b, "ip", "-n", h.ns, "link", "del", "flannel.1")
			run(b, "ip", "-n", h.ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", h.public.String(), "dev", "eth0", "dstport", "8472", "nolearning")
			run(b, "ip", "-n", h.ns, "link", "set", "flannel.1", "address", h.be.VtepMAC(), "mtu", "1450", "up")
			run(b, "ip", "-n", h.ns, "addr", "add", h.subnet.Addr().String()+"/32", "dev", "flannel.1")
			run(b, "ip", "-n", h.ns, "neigh", "replace", peer.subnet.Addr().String(), "lladdr", peer.be.VtepMAC(), "dev", "flannel.1", "nud", "permanent")
			run(b, "bridge", "-n", h.ns, "fdb", "replace", peer.be.VtepMAC(), "dev", "flannel.1", "dst", peer.public.String(), "self", "permanent")
			run(b, "ip", "-n", h.ns, "route", "replace", peer.subnet.String(), "via", peer.subnet.Addr().String(), "dev", "flannel.1", "onlink")
		}
	}
	weftBuilt := func() {
		for _, h := range l.hosts {
			run(b, "ip", "-n", h.ns, "link", "del", "flannel.1")
		}
		l.reconcileAll()
	}
	for _, ns := range []string{h2.ns, h2.pod} {
		srv := exec.Command("ip", "netns", "exec", ns, "iperf3", "-s", "-p", "5201")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	waitPing(b, h1, h2.podIP, 5*time.Second)
	time.Sleep(300 * time.Millisecond) // let the iperf3 servers listen
	for i := 0; i < b.N; i++ {
		var weft, hand []float64
		for range 5 {
			u := iperfJ(b, h1.ns, h2.public.String())
			w := iperfJ(b, h1.pod, h2.podIP.String())
			handBuilt()
			waitPing(b, h1, h2.podIP, 5*time.Second)
			m := iperfJ(b, h1.pod, h2.podIP.String())
			weftBuilt()
			waitPing(b, h1, h2.podIP, 5*time.Second)
			weft, hand = append(weft, w.gbps/u.gbps), append(hand, m.gbps/u.gbps)
			b.Logf("underlay %.2f, Weft's device %.2f, hand-built %.2f Gbit/s", u.gbps, w.gbps, m.gbps)
		}
		slices.Sort(weft)
		slices.Sort(hand)
		b.Logf("ratios Weft %.3f, hand-built %.3f", weft, hand)
		b.ReportMetric(weft[2], "ratio-weft")
		b.ReportMetric(hand[2], "ratio-hand-built")
	}
}
