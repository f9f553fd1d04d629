package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/backend/vxlan/peergen"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
)

// vxlanModes are the backend configs of the VXLAN tests that run in both
// modes.
var vxlanModes = map[string]string{
	"static":   `{"Type":"vxlan"}`,
	"reactive": `{"Type":"vxlan","Mode":"reactive"}`,
}

// vtepMAC returns the MAC of flannel.1 on host i.
func vtepMAC(t *testing.T, l *lab.Lab, i int) string {
	t.Helper()
	h := nlHandle(t, l, i)
	defer h.Close()
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatalf("h%d: flannel.1: %v", i, err)
	}
	return link.Attrs().HardwareAddr.String()
}

// leaseMACs returns every lease's published VtepMAC by subnet.
func leaseMACs(t *testing.T, l *lab.Lab) map[netip.Prefix]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := l.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ls, err := st.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]string{}
	for _, le := range ls {
		var d struct {
			VNI     int
			VtepMAC string
		}
		if le.Attrs.BackendType != "vxlan" || json.Unmarshal(le.Attrs.BackendData, &d) != nil || d.VNI != 1 {
			t.Errorf("lease %s: BackendType %q BackendData %s, want vxlan with VNI 1", le.Subnet, le.Attrs.BackendType, le.Attrs.BackendData)
		}
		out[le.Subnet] = d.VtepMAC
	}
	return out
}

// TestVXLANAllPairs: three hosts, two pods each, in static and reactive
// mode; every pod reaches every other, each host's device is flannel's
// (VNI 1, port 8472, learning off, MTU 1450) and its MAC is the one in its
// lease.
func TestVXLANAllPairs(t *testing.T) {
	for mode, cfg := range vxlanModes {
		t.Run(mode, func(t *testing.T) {
			l := upLab(t, lab.Spec{Hosts: 3, Pods: 2, Backend: "vxlan", BackendConfig: json.RawMessage(cfg)})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			m, err := l.Reachability(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !m.All() {
				t.Fatalf("unreachable: %v", m.Missing())
			}
			macs := leaseMACs(t, l)
			for i := 1; i <= 3; i++ {
				h := nlHandle(t, l, i)
				link, err := h.LinkByName("flannel.1")
				h.Close()
				if err != nil {
					t.Fatal(err)
				}
				v := link.(*netlink.Vxlan)
				if v.VxlanId != 1 || v.Port != 8472 || v.Learning || v.MTU != 1450 {
					t.Errorf("h%d flannel.1: VNI %d port %d learning %v MTU %d", i, v.VxlanId, v.Port, v.Learning, v.MTU)
				}
				if (mode == "reactive") != (v.L2miss && v.L3miss) {
					t.Errorf("h%d flannel.1 in %s mode: l2miss %v l3miss %v", i, mode, v.L2miss, v.L3miss)
				}
				if got, want := v.HardwareAddr.String(), macs[subnetOf(t, l, i)]; got != want {
					t.Errorf("h%d: device MAC %s, lease VtepMAC %s", i, got, want)
				}
				// weftd says what it decided about checksum offload.
				hs, _ := l.Host(i)
				if b, _ := os.ReadFile(hs.Log); !strings.Contains(string(b), "tx checksum offload") {
					t.Errorf("h%d: no log line about tx checksum offload", i)
				}
			}
		})
	}
}

// TestVXLANRestartLosesNothing: a pod pings a pod on another host every
// 10 ms while weftd restarts on both hosts (SIGTERM, then SIGKILL); no echo
// is lost and the VtepMACs do not change.
func TestVXLANRestartLosesNothing(t *testing.T) {
	requireTool(t, "ping")
	for mode, cfg := range vxlanModes {
		t.Run(mode, func(t *testing.T) {
			l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "vxlan", BackendConfig: json.RawMessage(cfg)})
			before := []string{vtepMAC(t, l, 1), vtepMAC(t, l, 2)}
			src, _ := l.Pod(1, 1)
			dst, _ := l.Pod(2, 1)
			const count = 600
			p := startPing(t, src.Netns, dst.IP, "-i", "0.01", "-c", strconv.Itoa(count), "-W", "1")
			eventually(t, 5*time.Second, "first echo reply", func() bool { return p.Replies() > 0 })
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, step := range []struct {
				host int
				sig  syscall.Signal
			}{{1, syscall.SIGTERM}, {2, syscall.SIGKILL}} {
				if err := l.RestartAgent(ctx, step.host, step.sig); err != nil {
					t.Fatalf("restart weftd on h%d (%s): %v", step.host, step.sig, err)
				}
				n := p.Replies()
				eventually(t, 5*time.Second, "replies after the restart", func() bool { return p.Replies() >= n+50 })
			}
			if p.Replies() >= count {
				t.Fatal("ping finished before the restarts did")
			}
			st, out, err := p.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Transmitted != count || st.Lost() != 0 {
				t.Fatalf("%d of %d echoes lost across two restarts:\n%s", st.Lost(), st.Transmitted, out[max(0, len(out)-400):])
			}
			after := []string{vtepMAC(t, l, 1), vtepMAC(t, l, 2)}
			if before[0] != after[0] || before[1] != after[1] {
				t.Errorf("VtepMACs changed across restarts: %v -> %v", before, after)
			}
		})
	}
}

// TestVXLANDeviceDeletedHealed: flannel.1 deleted by hand is recreated
// within the resync period with every entry replayed (flannel recreates the
// device but not the entries), with the same MAC.
func TestVXLANDeviceDeletedHealed(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan", ResyncPeriod: 2 * time.Second})
	mac := vtepMAC(t, l, 1)
	h := nlHandle(t, l, 1)
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	took := eventually(t, 10*time.Second, "h1 pod reaches h2 and h3 pods again", func() bool {
		for _, j := range []int{2, 3} {
			dst, _ := l.Pod(j, 1)
			if l.Ping(ctx, "h1-p1", dst.IP) != nil {
				return false
			}
		}
		return true
	})
	t.Logf("healed in %s (resync period 2s)", took.Round(time.Millisecond))
	if got := vtepMAC(t, l, 1); got != mac {
		t.Errorf("recreated device has MAC %s, want %s", got, mac)
	}
	m, err := l.Reachability(ctx)
	if err != nil || !m.All() {
		t.Fatalf("after healing: %v %v", err, m.Missing())
	}
}

// TestVXLANDirectRouting: hosts 1 and 2 share an underlay segment, host 3
// is behind a router. With DirectRouting, 1 and 2 route to each other
// without encapsulation; host 3 is reached over VXLAN; all pods reach all.
func TestVXLANDirectRouting(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan", Segments: map[int]int{3: 1},
		BackendConfig: json.RawMessage(`{"Type":"vxlan","DirectRouting":true}`)})
	h2, _ := l.Host(2)
	rs := hostRoutes(t, l, 1)
	h := nlHandle(t, l, 1)
	defer h.Close()
	devOf := func(r netlink.Route) string {
		link, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			return "?"
		}
		return link.Attrs().Name
	}
	if r, ok := rs[subnetOf(t, l, 2)]; !ok || devOf(r) != "eth0" || r.Gw.String() != h2.UnderlayIP {
		t.Errorf("h1 -> h2 (same segment): route %v, want via %s dev eth0", r, h2.UnderlayIP)
	}
	if r, ok := rs[subnetOf(t, l, 3)]; !ok || devOf(r) != "flannel.1" {
		t.Errorf("h1 -> h3 (behind a router): route %v, want dev flannel.1", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := l.Reachability(ctx)
	if err != nil || !m.All() {
		t.Fatalf("reachability: %v %v", err, m.Missing())
	}
}

// TestVXLANMixedModes: host 2 runs reactive mode (--backend-override), hosts
// 1 and 3 static; all pods reach all.
func TestVXLANMixedModes(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan",
		HostArgs: map[int][]string{2: {"--backend-override", `{"Mode":"reactive"}`}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := l.Reachability(ctx)
	if err != nil || !m.All() {
		t.Fatalf("reachability: %v %v", err, m.Missing())
	}
	h := nlHandle(t, l, 2)
	defer h.Close()
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	if v := link.(*netlink.Vxlan); !v.L3miss {
		t.Error("h2 did not switch to reactive mode")
	}
}

// TestVXLANMalformedLeaseSkipped: a lease whose VtepMAC is not a MAC is
// skipped with a warning naming it; every host keeps serving the others.
func TestVXLANMalformedLeaseSkipped(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "vxlan", ResyncPeriod: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := l.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bad := lease.Lease{Subnet: netip.MustParsePrefix("10.244.250.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("198.18.0.99"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"zz:zz"}`)}}
	if err := st.PutLeases(ctx, []lease.Lease{bad}, 0); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		hs, _ := l.Host(i)
		eventually(t, 10*time.Second, fmt.Sprintf("h%d logs the bad lease", i), func() bool {
			b, _ := os.ReadFile(hs.Log)
			return strings.Contains(string(b), "10.244.250.0/24") && strings.Contains(string(b), "VtepMAC")
		})
		if _, ok := hostRoutes(t, l, i)[bad.Subnet]; ok {
			t.Errorf("h%d routes the malformed lease", i)
		}
	}
	dst, _ := l.Pod(2, 1)
	if err := l.Ping(ctx, "h1-p1", dst.IP); err != nil {
		t.Errorf("h1-p1 -> h2-p1 with a malformed lease present: %v", err)
	}
}

// BenchmarkVXLANPodToPod measures TCP throughput pod to pod across two
// hosts over VXLAN against the underlay in the same run (iperf3 -A 0,1,
// 4 s, five underlay/pod pairs back to back, median of the pair ratios),
// and the round trip added over the underlay (ping, 200 echoes each,
// median of the per-run averages). Run:
//
//	go test -run '^$' -bench VXLANPodToPod -benchtime 1x ./test/e2e
func BenchmarkVXLANPodToPod(b *testing.B) {
	requireTool(b, "iperf3")
	requireTool(b, "ping")
	l := benchLab(b, lab.Spec{Hosts: 2, Pods: 1, Backend: "vxlan"})
	h1, _ := l.Host(1)
	h2, _ := l.Host(2)
	p1, _ := l.Pod(1, 1)
	p2, _ := l.Pod(2, 1)
	iperfServer(b, h2.Netns, 5201)
	iperfServer(b, p2.Netns, 5201)
	const d = 4 * time.Second
	for i := 0; i < b.N; i++ {
		// Pairs run back to back, so each ratio compares the two paths
		// under the same load from the rest of the machine; the median of
		// the pair ratios is the figure.
		var ul, pod, ratio, costRatio, ulRTT, podRTT []float64
		for range 5 {
			u := iperfCost(b, h1.Netns, h2.UnderlayIP, d)
			p := iperfCost(b, p1.Netns, p2.IP, d)
			ul, pod, ratio = append(ul, u.gbps), append(pod, p.gbps), append(ratio, p.gbps/u.gbps)
			costRatio = append(costRatio, u.cpuPerGbit()/p.cpuPerGbit())
			ulRTT = append(ulRTT, avgRTT(b, h1.Netns, h2.UnderlayIP))
			podRTT = append(podRTT, avgRTT(b, p1.Netns, p2.IP))
		}
		u, p, r, c := median(ul), median(pod), median(ratio), median(costRatio)
		ur, pr := median(ulRTT), median(podRTT)
		b.Logf("underlay %.2f Gbit/s %.2f, pod->pod %.2f Gbit/s %.2f, pair ratios %.3f, median ratio %.3f; CPU-cost ratios (underlay CPU%%/Gbit ÷ pod CPU%%/Gbit) %.3f, median %.3f; RTT underlay %.1f µs, pod %.1f µs, added %.1f µs",
			u, ul, p, pod, ratio, r, costRatio, c, ur, pr, pr-ur)
		b.ReportMetric(u, "underlay-Gbit/s")
		b.ReportMetric(p, "pod-Gbit/s")
		b.ReportMetric(r, "ratio")
		b.ReportMetric(c, "cost-ratio")
		b.ReportMetric(pr-ur, "added-RTT-µs")
	}
}

// iperfResult is one iperf3 TCP run: receiver throughput and the CPU use
// iperf3 reports for sender and receiver (percent of one core, user+system,
// which includes the kernel's work on the stream's path in softirq context
// charged to the processes).
type iperfResult struct {
	gbps, cpuSender, cpuReceiver float64
}

// cpuPerGbit is the CPU (sender+receiver) spent per Gbit/s.
func (r iperfResult) cpuPerGbit() float64 { return (r.cpuSender + r.cpuReceiver) / r.gbps }

// iperfCost runs iperf3 -A 0,1 against dst:5201 from ns for d.
func iperfCost(b testing.TB, ns, dst string, d time.Duration) iperfResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	out, err := inNS(ctx, ns, "iperf3", "-c", dst, "-p", "5201", "-t", strconv.Itoa(int(d.Seconds())), "-A", "0,1", "-J")
	if err != nil {
		b.Fatalf("iperf3: %v", err)
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
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.End.SumReceived.BitsPerSecond <= 0 {
		b.Fatalf("iperf3 JSON: %v\n%s", err, out)
	}
	return iperfResult{res.End.SumReceived.BitsPerSecond / 1e9, res.End.CPU.Host, res.End.CPU.Remote}
}

// avgRTT pings dst 200 times, 2 ms apart, and returns the average round
// trip in µs.
func avgRTT(b testing.TB, ns, dst string) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := inNS(ctx, ns, "ping", "-q", "-c", "200", "-i", "0.002", dst)
	if err != nil {
		b.Fatal(err)
	}
	// rtt min/avg/max/mdev = 0.041/0.052/0.120/0.010 ms
	i := strings.Index(out, "= ")
	if i < 0 {
		b.Fatalf("no rtt line:\n%s", out)
	}
	f := strings.Split(out[i+2:], "/")
	avg, err := strconv.ParseFloat(f[1], 64)
	if err != nil {
		b.Fatalf("rtt line: %v\n%s", err, out)
	}
	return avg * 1000
}

// BenchmarkVXLANControlPlane measures one host with 5000 synthetic peers
// (weftctl peers generate's leases): the time from the last etcd write to
// all 5000 routes, neighbours and FDB entries being programmed, with all
// leases in one transaction and in 50 transactions of 100; a cold start
// (weftd started on a host with no datapath: the device removed) until all
// are programmed; and weftd's resident memory. Run:
//
//	go test -run '^$' -bench VXLANControlPlane -benchtime 1x ./test/e2e
func BenchmarkVXLANControlPlane(b *testing.B) {
	const n = 5000
	l := benchLab(b, lab.Spec{Hosts: 1, Pods: 0, Backend: "vxlan", Network: "10.0.0.0/8", SkipReachability: true, ResyncPeriod: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := l.Store(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cfg, err := st.GetConfig(ctx)
	if err != nil {
		b.Fatal(err)
	}
	own := subnetOfB(b, l, 1)
	peers, err := peergen.Leases(cfg, peergen.Options{Count: n, BackendType: "vxlan", Taken: map[netip.Prefix]bool{own: true}})
	if err != nil {
		b.Fatal(err)
	}
	hs, _ := l.Host(1)
	idle := rssMB(b, hs.PID)
	b.Logf("weftd RSS with no peers: %.1f MB", idle)
	b.ReportMetric(idle, "weftd-RSS-MB-0peers")
	for i := 0; i < b.N; i++ {
		for _, batch := range []int{n, 100} {
			start := time.Now()
			for j := 0; j < n; j += batch {
				if err := st.PutLeases(ctx, peers[j:min(j+batch, n)], 0); err != nil {
					b.Fatal(err)
				}
			}
			last := time.Now()
			waitProgrammed(b, l, n)
			took := time.Since(last)
			b.Logf("%d peers in transactions of %d: written in %s, programmed %s after the last write", n, batch, last.Sub(start).Round(time.Millisecond), took.Round(time.Millisecond))
			b.ReportMetric(took.Seconds(), fmt.Sprintf("s-programmed-txn%d", batch))
			if batch == n {
				hs, _ = l.Host(1)
				rss := rssMB(b, hs.PID)
				b.Logf("weftd RSS with %d peers: %.1f MB", n, rss)
				b.ReportMetric(rss, "weftd-RSS-MB")
				// Steady state: five resyncs (2 s apart) of 5000 peers later.
				time.Sleep(10 * time.Second)
				steady := rssMB(b, hs.PID)
				b.Logf("weftd RSS after five resyncs of %d peers: %.1f MB", n, steady)
				b.ReportMetric(steady, "weftd-RSS-MB-steady")
			}
			for _, p := range peers {
				if err := st.DeleteLease(ctx, p.Subnet); err != nil {
					b.Fatal(err)
				}
			}
			waitProgrammed(b, l, 0)
		}
		// Cold start: the leases are in etcd, the host has no datapath.
		if err := st.PutLeases(ctx, peers, 0); err != nil {
			b.Fatal(err)
		}
		waitProgrammed(b, l, n)
		if err := l.StopAgent(ctx, 1, syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
		h := nlHandle(b, l, 1)
		if link, err := h.LinkByName("flannel.1"); err == nil {
			_ = h.LinkDel(link)
		}
		h.Close()
		start := time.Now()
		if err := l.StartAgent(ctx, 1); err != nil {
			b.Fatal(err)
		}
		ready := time.Since(start)
		waitProgrammed(b, l, n)
		cold := time.Since(start)
		b.Logf("cold start with %d peers: ready after %s, all programmed after %s", n, ready.Round(time.Millisecond), cold.Round(time.Millisecond))
		b.ReportMetric(cold.Seconds(), "s-cold-start")
		hs, _ = l.Host(1)
		b.ReportMetric(rssMB(b, hs.PID), "weftd-RSS-MB-cold")
		for _, p := range peers {
			_ = st.DeleteLease(ctx, p.Subnet)
		}
	}
}

// waitProgrammed polls host 1 (1 ms apart) until it holds exactly n Weft
// routes, n permanent neighbours and n permanent FDB entries on flannel.1.
func waitProgrammed(b *testing.B, l *lab.Lab, n int) {
	b.Helper()
	h := nlHandle(b, l, 1)
	defer h.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if countProgrammed(h) == [3]int{n, n, n} {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("not programmed within 60s: routes/neighbours/FDB %v, want %d each", countProgrammed(h), n)
		}
		time.Sleep(time.Millisecond) // polling the kernel: no event to wait on
	}
}

func countProgrammed(h *netlink.Handle) [3]int {
	var c [3]int
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		return c
	}
	idx := link.Attrs().Index
	rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 87, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	c[0] = len(rs)
	ns, _ := h.NeighList(idx, unix.AF_INET)
	for _, e := range ns {
		if e.State == netlink.NUD_PERMANENT {
			c[1]++
		}
	}
	fs, _ := h.NeighList(idx, unix.AF_BRIDGE)
	for _, e := range fs {
		if e.State == netlink.NUD_PERMANENT && e.LinkIndex == idx && e.HardwareAddr[0]&1 == 0 {
			c[2]++
		}
	}
	return c
}

func rssMB(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func subnetOfB(b *testing.B, l *lab.Lab, i int) netip.Prefix {
	b.Helper()
	hs, _ := l.Host(i)
	p, err := netip.ParsePrefix(hs.Subnet)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// flanneld returns the flanneld binary for interop tests ($WEFT_FLANNELD or
// flanneld on $PATH), skipping the test without one.
// startFlanneld runs flanneld (bin) against the lab's etcd inside the host
// namespace ns. It returns a function that stops it (safe to call twice)
// and one that returns the end of its log.
func startFlanneld(t *testing.T, bin, ns string) (stop func(), logTail func() string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "flanneld.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	fl := exec.Command("ip", "netns", "exec", ns, bin,
		"-etcd-endpoints", lab.EtcdURL, "-iface", "eth0",
		"-subnet-file", filepath.Join(t.TempDir(), "subnet.env"), "-healthz-port", "0")
	fl.Stdout, fl.Stderr = logf, logf
	if err := fl.Start(); err != nil {
		t.Fatal(err)
	}
	stop = func() {
		if fl.ProcessState == nil {
			_ = fl.Process.Signal(syscall.SIGTERM)
			_ = fl.Wait()
		}
	}
	logTail = func() string {
		b, _ := os.ReadFile(logf.Name())
		return string(b[max(0, len(b)-2000):])
	}
	return stop, logTail
}

func flanneld(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WEFT_FLANNELD"); p != "" {
		return p
	}
	p, err := exec.LookPath("flanneld")
	if err != nil {
		t.Skip("no flanneld: set WEFT_FLANNELD to a flanneld binary (e.g. built from github.com/flannel-io/flannel) to run the interop test")
	}
	return p
}

// TestFlannelInterop: a cluster of two Weft hosts and one flannel host on
// one etcd. Host 3 starts as a fresh flannel node (its weftd stopped, its
// device and state removed); all pods reach all. Then host 3 moves to Weft
// as docs/migration-from-flannel.md describes: flanneld stops, weftd
// starts, adopts flannel.1 and publishes flannel's VtepMAC unchanged; all
// pods still reach all.
func TestFlannelInterop(t *testing.T) {
	bin := flanneld(t)
	requireTool(t, "iptables") // flanneld's FORWARD rules
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	h3, _ := l.Host(3)
	sub3 := subnetOf(t, l, 3)
	if err := l.StopAgent(ctx, 3, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	h := nlHandle(t, l, 3)
	if link, err := h.LinkByName("flannel.1"); err == nil {
		_ = h.LinkDel(link)
	}
	h.Close()
	if err := os.RemoveAll(filepath.Join(h3.StateDir, "vxlan")); err != nil {
		t.Fatal(err)
	}
	stopFlannel, flannelLog := startFlanneld(t, bin, h3.Netns)
	defer stopFlannel()
	var flannelMAC string
	eventually(t, 30*time.Second, "flanneld publishes its own VtepMAC for h3's subnet", func() bool {
		h := nlHandle(t, l, 3)
		defer h.Close()
		link, err := h.LinkByName("flannel.1")
		if err != nil {
			return false
		}
		flannelMAC = link.Attrs().HardwareAddr.String()
		return leaseMACs(t, l)[sub3] == flannelMAC
	})
	m, err := reachAll(ctx, l)
	if err != nil {
		t.Fatalf("Weft and flannel hosts: %v\nflanneld log:\n%s", err, flannelLog())
	}
	t.Logf("2 Weft hosts + 1 flannel host: %d pods reach each other", len(m))
	// flanneld programmed host 3 (its routes are not Weft's), and host 1
	// resolves host 3's overlay address to flannel's VtepMAC.
	h3nl := nlHandle(t, l, 3)
	fr, err := h3nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: subnetOf(t, l, 1).Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}}, netlink.RT_FILTER_DST)
	h3nl.Close()
	if err != nil || len(fr) != 1 || fr[0].Protocol == 87 {
		t.Errorf("h3 (flannel) route to h1's subnet: %v %v, want one route made by flanneld", fr, err)
	}
	h1nl := nlHandle(t, l, 1)
	link1, _ := h1nl.LinkByName("flannel.1")
	ns1, _ := h1nl.NeighList(link1.Attrs().Index, unix.AF_INET)
	h1nl.Close()
	found := false
	for _, n := range ns1 {
		if n.IP.Equal(sub3.Addr().AsSlice()) && n.HardwareAddr.String() == flannelMAC {
			found = true
		}
	}
	if !found {
		t.Errorf("h1 (Weft) has no neighbour %s -> flannel's VtepMAC %s: %v", sub3.Addr(), flannelMAC, ns1)
	}

	// Migration of host 3 from flannel to Weft.
	stopFlannel()
	if err := l.StartAgent(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if got := vtepMAC(t, l, 3); got != flannelMAC {
		t.Errorf("weftd changed the adopted device's MAC from %s to %s", flannelMAC, got)
	}
	if got := leaseMACs(t, l)[sub3]; got != flannelMAC {
		t.Errorf("lease VtepMAC after migration %s, want flannel's %s", got, flannelMAC)
	}
	if _, err := reachAll(ctx, l); err != nil {
		t.Fatalf("after moving h3 to Weft: %v", err)
	}
}

// reachAll checks that every pod reaches every other pod.
func reachAll(ctx context.Context, l *lab.Lab) ([]lab.PodState, error) {
	var m *lab.Matrix
	err := pollUntil(ctx, 200*time.Millisecond, func() bool {
		var err error
		m, err = l.Reachability(ctx)
		return err == nil && m.All()
	})
	if err != nil {
		if m != nil {
			return nil, fmt.Errorf("unreachable: %v", m.Missing())
		}
		return nil, err
	}
	return l.Pods(), nil
}

// TestVXLANDriftRepaired: h1's route, neighbour and FDB entry for h2 are
// deleted by hand, and a wrong MAC is written into the neighbour for h3;
// within the resync period everything is as it was and pods reach each
// other. A route someone else added inside the overlay is left alone.
func TestVXLANDriftRepaired(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan", ResyncPeriod: 2 * time.Second})
	h := nlHandle(t, l, 1)
	defer h.Close()
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	idx := link.Attrs().Index
	sub2, sub3 := subnetOf(t, l, 2), subnetOf(t, l, 3)
	macs := leaseMACs(t, l)
	before := countProgrammed(h)
	if r, ok := hostRoutes(t, l, 1)[sub2]; !ok {
		t.Fatal("no route to h2")
	} else if err := h.RouteDel(&r); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: sub2.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	mac2, _ := net.ParseMAC(macs[sub2])
	h2, _ := l.Host(2)
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, HardwareAddr: mac2, IP: net.ParseIP(h2.UnderlayIP)}); err != nil {
		t.Fatal(err)
	}
	wrong, _ := net.ParseMAC("0e:00:00:00:be:ef")
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: sub3.Addr().AsSlice(), HardwareAddr: wrong}); err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 244, 199, 0), Mask: net.CIDRMask(24, 32)}, Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_STATIC}
	if err := h.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 4*time.Second, "h1's entries for h2 and h3 restored within the resync period (2s, plus slack for a loaded machine)", func() bool {
		if countProgrammed(h) != before {
			return false
		}
		ns, _ := h.NeighList(idx, unix.AF_INET)
		for _, n := range ns {
			if n.IP.Equal(sub3.Addr().AsSlice()) {
				return n.HardwareAddr.String() == macs[sub3]
			}
		}
		return false
	})
	t.Logf("drift repaired in %s (resync period 2s)", took.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := reachAll(ctx, l); err != nil {
		t.Fatal(err)
	}
	rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_BLACKHOLE}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if len(rs) != 1 {
		t.Errorf("the blackhole route someone else added inside the overlay is gone: %v", rs)
	}
}

// TestVXLANReactiveHoldsOnlyUsedPeers: in reactive mode a host has one
// route for the overlay and, after its pod talked to host 2's pod only,
// neighbour and FDB entries for host 2 and none for host 3.
func TestVXLANReactiveHoldsOnlyUsedPeers(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 1, Backend: "vxlan", SkipReachability: true,
		BackendConfig: json.RawMessage(`{"Type":"vxlan","Mode":"reactive"}`)})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, i := range []int{1, 2, 3} {
		if err := l.WaitReady(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	dst, _ := l.Pod(2, 1)
	if err := l.Ping(ctx, "h1-p1", dst.IP); err != nil {
		t.Fatal(err)
	}
	rs := hostRoutes(t, l, 1)
	if len(rs) != 1 {
		t.Errorf("h1 has %d Weft routes, want 1 (the overlay): %v", len(rs), rs)
	}
	macs := leaseMACs(t, l)
	sub2, sub3 := subnetOf(t, l, 2), subnetOf(t, l, 3)
	h := nlHandle(t, l, 1)
	defer h.Close()
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := h.NeighList(link.Attrs().Index, unix.AF_INET)
	var to2 int
	for _, n := range ns {
		a, _ := netip.AddrFromSlice(n.IP)
		switch {
		case sub2.Contains(a.Unmap()):
			to2++
		case sub3.Contains(a.Unmap()):
			t.Errorf("neighbour for host 3, which h1 never talked to: %v", n)
		}
	}
	if to2 == 0 {
		t.Errorf("no neighbour for host 2's pod after the ping: %v", ns)
	}
	fs, _ := h.NeighList(link.Attrs().Index, unix.AF_BRIDGE)
	var fdb2 bool
	for _, f := range fs {
		switch f.HardwareAddr.String() {
		case macs[sub2]:
			fdb2 = true
		case macs[sub3]:
			t.Errorf("FDB entry for host 3, which h1 never talked to: %v", f)
		}
	}
	if !fdb2 {
		t.Errorf("no FDB entry for host 2 after the ping: %v", fs)
	}
}

// fastPathPorts returns, for host i, how many veths are on cni0 and how
// many of them carry Weft's fast path filter.
func fastPathPorts(t *testing.T, l *lab.Lab, i int) (ports, attached int) {
	t.Helper()
	h := nlHandle(t, l, i)
	defer h.Close()
	br, err := h.LinkByName("cni0")
	if err != nil {
		return 0, 0
	}
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if link.Attrs().MasterIndex != br.Attrs().Index || link.Type() != "veth" {
			continue
		}
		ports++
		fs, _ := h.FilterList(link, netlink.HANDLE_MIN_INGRESS)
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == "weft_fastpath" && bf.DirectAction {
				attached++
			}
		}
	}
	return ports, attached
}

// TestVXLANFastPath: three hosts, two pods each, weftd with "FastPath":
// true; every pod veth gets the tc program (by a later Reconcile, since
// the CNI plugin creates the veths after weftd started), flannel.1 gets the
// ingress program, and every pod still reaches every other (twice: the
// second time after weftd has put the pods the first pass made known into
// its pod map).
func TestVXLANFastPath(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 3, Pods: 2, Backend: "vxlan", ResyncPeriod: time.Second,
		BackendConfig: json.RawMessage(`{"Type":"vxlan","FastPath":true}`)})
	deadline := time.Now().Add(15 * time.Second)
	for i := 1; i <= 3; i++ {
		for {
			ports, attached := fastPathPorts(t, l, i)
			if ports == 2 && attached == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h%d: fast path on %d of %d pod veths, want 2 of 2", i, attached, ports)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := 1; i <= 3; i++ {
		h := nlHandle(t, l, i)
		tun, err := h.LinkByName("flannel.1")
		if err != nil {
			t.Fatal(err)
		}
		fs, _ := h.FilterList(tun, netlink.HANDLE_MIN_INGRESS)
		h.Close()
		n := 0
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == "weft_fastpath" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("h%d flannel.1: %d fast path filters, want 1", i, n)
		}
	}
	for pass := 1; pass <= 2; pass++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		m, err := l.Reachability(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if !m.All() {
			t.Fatalf("pass %d: unreachable with FastPath: %v", pass, m.Missing())
		}
		if pass == 1 {
			waitPodMaps(t, l, 3, 2)
		}
	}
}

// waitPodMaps waits until weftd on each of hosts 1..n has logged a fast
// path pod map holding pods pods.
func waitPodMaps(t *testing.T, l *lab.Lab, n, pods int) {
	t.Helper()
	want := fmt.Sprintf("pods=%d", pods)
	deadline := time.Now().Add(15 * time.Second)
	for i := 1; i <= n; i++ {
		hs, err := l.Host(i)
		if err != nil {
			t.Fatal(err)
		}
		for {
			b, _ := os.ReadFile(hs.Log)
			found := false
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "fast path pod map updated") && strings.Contains(line, want) {
					found = true
				}
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h%d: weftd did not log a pod map with %s", i, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
