package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// ServeHealth serves /healthz (the process is alive), /readyz (the agent
// is [Agent.Ready]) and /metrics (Prometheus text format) on addr, "HOST:PORT" or "unix:/path", until ctx
// is done.
func (a *Agent) ServeHealth(ctx context.Context, addr string) error {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("health: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen(network, address)
	if err != nil {
		return fmt.Errorf("health: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready: lease, datapath or subnet.env not in place yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/metrics", a.serveMetrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health: %w", err)
	}
	return nil
}

// serveMetrics writes the agent's metrics in Prometheus' text format.
func (a *Agent) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	m := &a.metrics
	ready := 0
	if a.Ready() {
		ready = 1
	}
	metric := func(name, typ, help string, v any) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, typ, name, v)
	}
	metric("weftd_ready", "gauge", "1 once the lease is held, the datapath programmed and subnet.env written.", ready)
	metric("weftd_peers", "gauge", "Peers passed to the backend at the last reconcile.", m.peers.Load())
	metric("weftd_reconciles_total", "counter", "Reconciles of the datapath.", m.reconciles.Load())
	metric("weftd_reconcile_errors_total", "counter", "Reconciles that reported an error for at least one peer.", m.reconcileErrors.Load())
	metric("weftd_last_reconcile_seconds", "gauge", "Duration of the last reconcile.", time.Duration(m.lastReconcileNanos.Load()).Seconds())
	metric("weftd_lease_acquisitions_total", "counter", "Subnet leases acquired (at start and after a loss).", m.acquisitions.Load())
	if c := m.counters.Load(); c != nil {
		counters := (*c).Counters()
		names := make([]string, 0, len(counters))
		for name := range counters {
			names = append(names, name)
		}
		sort.Strings(names)
		fmt.Fprintf(w, "# HELP weftd_backend_total Packet-path counters of the backend.\n# TYPE weftd_backend_total counter\n")
		for _, name := range names {
			fmt.Fprintf(w, "weftd_backend_total{counter=%q} %d\n", name, counters[name])
		}
	}
}
