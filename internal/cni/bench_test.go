package cni_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weft-net/weft/internal/cni/cnitest"
)

// benchSetup is one plugin set under test on its own host namespace.
type benchSetup struct {
	name string
	host *testHost
	list *libcni.NetworkConfigList
}

func benchSetups(b *testing.B) []benchSetup {
	b.Helper()
	var out []benchSetup
	// Weft: one plugin. FLANNEL_IPMASQ=true so neither set masquerades.
	w := newBenchHost(b)
	w.writeEnv("10.244.7.0/24", true)
	out = append(out, benchSetup{"weft", w, w.list("1.1.0", "")})
	// The reference: bridge + host-local, configured as flannel configures
	// them (gateway on the bridge, default route, same MTU).
	r := newBenchHost(b)
	l, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"refnet","plugins":[
		{"type":"bridge","bridge":"cni0","isGateway":true,"isDefaultGateway":true,"mtu":1450,"ipMasq":false,
		 "ipam":{"type":"host-local","subnet":"10.244.8.0/24","dataDir":%q}}]}`, filepath.Join(r.dir, "data"))))
	if err != nil {
		b.Fatal(err)
	}
	out = append(out, benchSetup{"bridge+host-local", r, l})
	return out
}

// newBenchHost is newHost for a benchmark.
func newBenchHost(b *testing.B) *testHost {
	b.Helper()
	cnitest.RequireRoot(b)
	dir := b.TempDir()
	h := &testHost{
		tb:         b,
		ns:         cnitest.NewNS(b, cnitest.NSName("c", "bench")),
		dir:        dir,
		subnetFile: filepath.Join(dir, "run", "subnet.env"),
		dataDir:    filepath.Join(dir, "data"),
	}
	h.rt = cnitest.NewRuntime(h.ns, pluginDir, filepath.Join(dir, "cache"))
	return h
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// figures are one plugin set's measurements.
type figures struct {
	addP50, addP99, delP50, delP99, attach100 time.Duration
}

// measure attaches n containers one after another (timing each ADD), then
// detaches them (timing each DEL), then attaches burst pods all at once
// (timing the whole) and detaches them.
func measure(b *testing.B, s benchSetup, pods []string, burst int) figures {
	b.Helper()
	ctx := context.Background()
	add := make([]time.Duration, len(pods))
	del := make([]time.Duration, len(pods))
	for i, p := range pods {
		t0 := time.Now()
		if _, err := s.host.rt.Add(ctx, s.list, cnitest.Attachment(fmt.Sprint("lat-", i), p, "eth0")); err != nil {
			b.Fatalf("%s: ADD %d: %v", s.name, i, err)
		}
		add[i] = time.Since(t0)
	}
	for i, p := range pods {
		t0 := time.Now()
		if err := s.host.rt.Del(ctx, s.list, cnitest.Attachment(fmt.Sprint("lat-", i), p, "eth0")); err != nil {
			b.Fatalf("%s: DEL %d: %v", s.name, i, err)
		}
		del[i] = time.Since(t0)
	}
	var wg sync.WaitGroup
	errs := make([]error, burst)
	t0 := time.Now()
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.host.rt.Add(ctx, s.list, cnitest.Attachment(fmt.Sprint("burst-", i), pods[i], "eth0"))
		}()
	}
	wg.Wait()
	f := figures{attach100: time.Since(t0)}
	for i, err := range errs {
		if err != nil {
			b.Fatalf("%s: burst ADD %d: %v", s.name, i, err)
		}
	}
	for i := range burst {
		if err := s.host.rt.Del(ctx, s.list, cnitest.Attachment(fmt.Sprint("burst-", i), pods[i], "eth0")); err != nil {
			b.Fatalf("%s: burst DEL %d: %v", s.name, i, err)
		}
	}
	f.addP50, f.addP99 = quantile(add, 0.5), quantile(add, 0.99)
	f.delP50, f.delP99 = quantile(del, 0.5), quantile(del, 0.99)
	return f
}

// BenchmarkCNI measures, for weft and for bridge + host-local in the same
// run (each on its own host namespace, through libcni): ADD and DEL latency
// (median and p99 over 200 containers attached one after another on one
// host) and the wall time to attach 100 pods on one host all at once. It
// reports both sets of figures and their ratios (weft / reference; below 1
// means weft is faster). Run it with -benchtime 1x:
//
//	go test -run '^$' -bench BenchmarkCNI -benchtime 1x ./internal/cni/
func BenchmarkCNI(b *testing.B) {
	const latencyPods, burstPods = 200, 100
	setups := benchSetups(b)
	pods := make([]string, latencyPods)
	for i := range pods {
		pods[i] = cnitest.NewNS(b, cnitest.NSName("c", fmt.Sprint("b", i)))
	}
	b.ResetTimer()
	for range b.N {
		// The reference first, then weft: neither benefits from a warm-up
		// the other paid for (both bridges are created by their first ADD).
		ref := measure(b, setups[1], pods, burstPods)
		weft := measure(b, setups[0], pods, burstPods)
		for _, m := range []struct {
			name string
			w, r time.Duration
		}{
			{"add-p50", weft.addP50, ref.addP50},
			{"add-p99", weft.addP99, ref.addP99},
			{"del-p50", weft.delP50, ref.delP50},
			{"del-p99", weft.delP99, ref.delP99},
			{"attach100", weft.attach100, ref.attach100},
		} {
			b.ReportMetric(ms(m.w), "weft-"+m.name+"-ms")
			b.ReportMetric(ms(m.r), "ref-"+m.name+"-ms")
			b.ReportMetric(float64(m.w)/float64(m.r), m.name+"-ratio")
		}
	}
}
