package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/subnetenv"
)

// agentArgs returns host i's weftd command line.
func (l *Lab) agentArgs(h HostState) []string {
	spec := l.state.Spec
	argv := []string{spec.Weftd,
		"--etcd-endpoints", EtcdURL,
		"--iface", "eth0",
		"--subnet-file", h.SubnetFile,
		"--state-dir", h.StateDir,
		"--healthz-addr", "unix:" + h.HealthSocket,
		"--resync-period", spec.ResyncPeriod.String(),
	}
	return append(argv, spec.HostArgs[h.Index]...)
}

// startAgent starts weftd in host i's namespace (without waiting).
func (l *Lab) startAgent(i int) error {
	h, err := l.Host(i)
	if err != nil {
		return err
	}
	if alive(h.PID) && labProcess(h.PID, l.state.Dir) {
		return fmt.Errorf("lab %s: weftd on %s is running already (pid %d)", l.state.Name, h.Name, h.PID)
	}
	if err := os.Remove(h.HealthSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: %w", err)
	}
	ns, err := netns.GetFromName(h.Netns)
	if err != nil {
		return fmt.Errorf("lab %s: namespace %s: %w", l.state.Name, h.Netns, err)
	}
	defer ns.Close()
	pid, exited, err := startIn(ns, l.agentArgs(h), h.Log)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.state.Hosts[i-1].PID = pid
	l.exited[pid] = exited
	l.mu.Unlock()
	return l.save()
}

// healthClient returns an HTTP client that dials a unix socket.
func healthClient(sock string) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		},
	}
}

// Ready reports whether host i's weftd answers /readyz with 200.
func (l *Lab) Ready(ctx context.Context, i int) (bool, error) {
	h, err := l.Host(i)
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://weftd/readyz", nil)
	if err != nil {
		return false, err
	}
	resp, err := healthClient(h.HealthSocket).Do(req)
	if err != nil {
		return false, nil // not listening yet
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

// WaitReady waits until host i's weftd is ready (its /readyz answers 200),
// then records the host's subnet from its subnet.env. It fails early, with
// the end of weftd's log, if weftd exits.
func (l *Lab) WaitReady(ctx context.Context, i int) error {
	h, err := l.Host(i)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, l.state.Spec.ReadyTimeout)
	defer cancel()
	err = poll(wctx, 25*time.Millisecond, func() (bool, error) {
		if !alive(h.PID) {
			return false, fmt.Errorf("lab %s: weftd on %s exited:\n%s", l.state.Name, h.Name, tail(h.Log, 3000))
		}
		return l.Ready(wctx, i)
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return fmt.Errorf("lab %s: weftd on %s not ready: %w\n%s", l.state.Name, h.Name, err, tail(h.Log, 3000))
		}
		return err
	}
	env, err := subnetenv.Read(h.SubnetFile)
	if err != nil {
		return fmt.Errorf("lab %s: weftd on %s is ready but: %w", l.state.Name, h.Name, err)
	}
	l.mu.Lock()
	l.state.Hosts[i-1].Subnet = env.HostSubnet().String()
	l.mu.Unlock()
	return l.save()
}

// waitAgents waits for every host's weftd, in parallel.
func (l *Lab) waitAgents(ctx context.Context) error {
	var (
		wg   sync.WaitGroup
		errs = make([]error, len(l.state.Hosts))
	)
	for i := range l.state.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.WaitReady(ctx, i+1)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// agentLogs returns the end of the weftd logs of hosts (host indexes; all
// hosts when empty), at most limit of them, for error messages.
func (l *Lab) agentLogs(hosts []int, limit int) string {
	var b strings.Builder
	n := 0
	for _, h := range l.State().Hosts {
		if len(hosts) > 0 && !slices.Contains(hosts, h.Index) {
			continue
		}
		if n == limit {
			fmt.Fprintf(&b, "\n(more logs under %s)", l.state.Dir)
			break
		}
		n++
		fmt.Fprintf(&b, "\n--- %s (%s) ---\n%s", h.Name, h.Log, tail(h.Log, 1500))
	}
	return b.String()
}

// StopAgent sends sig (e.g. SIGTERM, SIGKILL) to host i's weftd and waits
// until it has exited.
func (l *Lab) StopAgent(ctx context.Context, i int, sig syscall.Signal) error {
	h, err := l.Host(i)
	if err != nil {
		return err
	}
	if h.PID == 0 || !alive(h.PID) {
		return fmt.Errorf("lab %s: weftd on %s is not running", l.state.Name, h.Name)
	}
	if !labProcess(h.PID, l.state.Dir) {
		return fmt.Errorf("lab %s: pid %d is not this lab's weftd", l.state.Name, h.PID)
	}
	if err := l.signalAndWait(ctx, h.PID, sig); err != nil {
		return err
	}
	l.mu.Lock()
	l.state.Hosts[i-1].PID = 0
	l.mu.Unlock()
	return l.save()
}

// StartAgent starts host i's weftd again (after [Lab.StopAgent]) and waits
// until it is ready.
func (l *Lab) StartAgent(ctx context.Context, i int) error {
	if err := l.startAgent(i); err != nil {
		return err
	}
	return l.WaitReady(ctx, i)
}

// RestartAgent stops host i's weftd with sig and starts it again.
func (l *Lab) RestartAgent(ctx context.Context, i int, sig syscall.Signal) error {
	if err := l.StopAgent(ctx, i, sig); err != nil {
		return err
	}
	return l.StartAgent(ctx, i)
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab: address %q: %w", s, err)
	}
	return a, nil
}
