package udp

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// iperf3 runs one TCP stream from client namespace to server for secs
// seconds (client pinned to core 0, server to core 1, as flannel's figures
// here were taken) and returns Gbit/s received.
func iperf3(t testing.TB, client, server, dst string, secs int) float64 {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", server, "iperf3", "-s", "-1", "-A", "1")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", client, "iperf3", "-c", dst, "-t", strconv.Itoa(secs), "-A", "0", "-J").Output()
		if err == nil {
			var r struct {
				Error string `json:"error"`
				End   struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("iperf3 output: %v", err)
			}
			if r.Error == "" {
				return r.End.SumReceived.BitsPerSecond / 1e9
			}
			// iperf3 -J exits 0 even when it could not connect.
			err = fmt.Errorf("iperf3: %s", r.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("iperf3 -c %s from %s: %v\n%s", dst, client, err, out)
		}
		time.Sleep(50 * time.Millisecond) // the server is not listening yet
	}
}

// cpuSeconds returns the CPU time this process has used (the backends of
// every test host run inside it).
func cpuSeconds(t testing.TB) float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkThroughputRatio measures, in one run, a TCP stream between two
// host namespaces over the underlay and between their pods over the udp
// backend (median of 3 each), and reports the ratio and the backends' CPU
// per Gbit/s. Run with -benchtime 1x; WUD_SECS sets the stream length
// (default 4 s), WUD_MTU the underlay MTU (default 1500) and WUD_QUEUES the
// TUN queues (Backend.Queues).
func BenchmarkThroughputRatio(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3")
	}
	secs := 4
	if s, err := strconv.Atoi(os.Getenv("WUD_SECS")); err == nil && s > 0 {
		secs = s
	}
	for b.Loop() {
		cfg := `{"Type":"udp"}`
		if q := os.Getenv("WUD_QUEUES"); q != "" {
			cfg = `{"Type":"udp","Queues":` + q + `}`
		}
		tp := newTopo(b, 2, cfg)
		if m, err := strconv.Atoi(os.Getenv("WUD_MTU")); err == nil {
			tp.setUnderlayMTU(m)
		}
		for _, h := range tp.hosts {
			tp.start(h)
		}
		h1, h2 := tp.hosts[0], tp.hosts[1]
		var under, over, cpu []float64
		for range 3 {
			under = append(under, iperf3(b, h1.name, h2.name, h2.ip.String(), secs))
			c0 := cpuSeconds(b)
			g := iperf3(b, h1.pod, h2.pod, h2.podIP.String(), secs)
			c1 := cpuSeconds(b)
			over = append(over, g)
			cpu = append(cpu, (c1-c0)/float64(secs)/2/g) // cores per side per Gbit/s
		}
		mu, mo := median(under), median(over)
		var pairs []float64
		for i := range over {
			pairs = append(pairs, over[i]/under[i])
		}
		b.ReportMetric(mu, "underlay-Gbit/s")
		b.ReportMetric(mo, "udp-Gbit/s")
		b.ReportMetric(mo/mu, "ratio")
		// Each overlay stream runs right after its underlay stream: under a
		// changing load, the median of the pairs' ratios is the steadier
		// figure.
		b.ReportMetric(median(pairs), "pair-ratio")
		b.ReportMetric(median(cpu), "cores/side/Gbit/s")
		b.Logf("underlay %v Gbit/s, udp %v Gbit/s, cores per side per Gbit/s %v", fmtAll(under), fmtAll(over), fmtAll(cpu))
		b.Logf("sender's stats %+v", h1.b.Stats())
		b.Logf("receiver's stats %+v", h2.b.Stats())
	}
}

// setUnderlayMTU sets the MTU of every underlay link.
func (tp *topo) setUnderlayMTU(m int) {
	for i, h := range tp.hosts {
		run(tp.t, "ip", "-n", tp.ul, "link", "set", fmt.Sprintf("p%d", i+1), "mtu", strconv.Itoa(m))
		run(tp.t, "ip", "-n", h.name, "link", "set", "eth0", "mtu", strconv.Itoa(m))
	}
}

func fmtAll(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return strings.Join(s, " ")
}
