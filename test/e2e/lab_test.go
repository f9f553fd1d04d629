package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/lab"
	"golang.org/x/sys/unix"
)

// weftctl runs the built weftctl and returns its combined output.
func weftctl(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin.weftctl, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("weftctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// TestLabCLI drives `weftctl lab` as a user would: up prints the table and
// a full reachability matrix, a second up with the same name fails
// clearly, status --json describes namespaces that `ip netns exec` can
// enter and live weftd processes, down removes everything and is
// idempotent.
func TestLabCLI(t *testing.T) {
	requireBinaries(t)
	name := labName()
	t.Cleanup(func() { downLab(t, name) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := weftctl(ctx, "lab", "up", "--name", name, "--hosts", "2", "--pods", "2", "--backend", "host-gw")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"12/12 pod pairs reachable", "198.18.0.11", "198.18.0.12", "h2-p2"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("lab up reports unreachable pairs:\n%s", out)
	}

	out, err = weftctl(ctx, "lab", "up", "--name", name, "--hosts", "1", "--backend", "host-gw")
	if err == nil || !strings.Contains(out, "exists already") {
		t.Errorf("second lab up with the same name: err=%v, output:\n%s", err, out)
	}

	out, err = weftctl(ctx, "lab", "status", "--name", name, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Name  string `json:"name"`
		Etcd  string `json:"etcd"`
		Hosts []struct {
			Name, Netns, Subnet string
			UnderlayIP          string `json:"underlay_ip"`
			SubnetFile          string `json:"subnet_file"`
			PID                 int    `json:"pid"`
		} `json:"hosts"`
		Pods []struct{ Name, Netns, Host, IP string } `json:"pods"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.Name != name || !strings.HasPrefix(st.Etcd, "unix://") || len(st.Hosts) != 2 || len(st.Pods) != 4 {
		t.Fatalf("status --json: unexpected document:\n%s", out)
	}
	for _, h := range st.Hosts {
		if h.PID <= 0 || !processAlive(h.PID) {
			t.Errorf("%s: weftd pid %d is not running", h.Name, h.PID)
		}
		if _, err := os.Stat(h.SubnetFile); err != nil {
			t.Errorf("%s: subnet file: %v", h.Name, err)
		}
		addr, err := inNS(ctx, h.Netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(addr, h.UnderlayIP+"/24") {
			t.Errorf("%s: ip netns exec %s: %v %s", h.Name, h.Netns, err, addr)
		}
	}
	for _, p := range st.Pods {
		addr, err := inNS(ctx, p.Netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(addr, p.IP+"/") {
			t.Errorf("%s: ip netns exec %s: %v %s", p.Name, p.Netns, err, addr)
		}
	}

	out, err = weftctl(ctx, "lab", "restart", "--name", name, "--host", "1")
	if err != nil || !strings.Contains(out, "h1: weftd restarted") {
		t.Errorf("lab restart: %v\n%s", err, out)
	}

	for range 2 { // idempotent
		if out, err := weftctl(ctx, "lab", "down", "--name", name); err != nil {
			t.Fatalf("lab down: %v\n%s", err, out)
		}
		if left := labNamespaces(t, name); len(left) > 0 {
			t.Fatalf("lab down left namespaces %v", left)
		}
	}
	for _, h := range st.Hosts {
		if processAlive(h.PID) {
			t.Errorf("weftd %d of %s still running after lab down", h.PID, h.Name)
		}
	}
	if _, err := os.Stat(lab.Dir(name)); !os.IsNotExist(err) {
		t.Errorf("%s still exists after lab down (%v)", lab.Dir(name), err)
	}
}

// TestLabDownAfterCrash: the lab's etcd dies, lab.json is lost and a
// stray client runs inside a pod; lab down still stops every process and
// removes every namespace.
func TestLabDownAfterCrash(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "host-gw", SkipReachability: true})
	st := l.State()
	pids := []int{st.EtcdPID}
	for _, h := range st.Hosts {
		pids = append(pids, h.PID)
	}
	stray := exec.Command("ip", "netns", "exec", st.Pods[0].Netns, "sleep", "600")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()
	podIno := nsInode(t, lab.NetnsDir+"/"+st.Pods[0].Netns)
	eventually(t, 5*time.Second, "stray client inside the pod namespace", func() bool {
		var s syscall.Stat_t
		return syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", stray.Process.Pid), &s) == nil && s.Ino == podIno
	})
	if err := syscall.Kill(st.EtcdPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(st.Dir + "/lab.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Load(st.Name); err == nil {
		t.Fatal("Load succeeded without lab.json")
	}
	if err := lab.Down(st.Name); err != nil {
		t.Fatalf("down after crash: %v", err)
	}
	select {
	case <-strayDone:
	case <-time.After(10 * time.Second):
		t.Error("a process inside a pod namespace survived lab down")
	}
	for _, pid := range pids {
		if processAlive(pid) {
			t.Errorf("process %d survived lab down", pid)
		}
	}
	if left := labNamespaces(t, st.Name); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if err := lab.Down(st.Name); err != nil {
		t.Errorf("second down: %v", err)
	}
}

// TestParsePing checks the summary parser on iputils' two spellings.
func TestParsePing(t *testing.T) {
	for _, tc := range []struct {
		out    string
		tx, rx int
	}{
		{"--- 10.0.0.2 ping statistics ---\n600 packets transmitted, 600 received, 0% packet loss, time 6001ms\n", 600, 600},
		{"5 packets transmitted, 3 packets received, 40% packet loss\n", 5, 3},
		{"3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2041ms\n", 3, 0},
	} {
		st, err := parsePing(tc.out)
		if err != nil || st.Transmitted != tc.tx || st.Received != tc.rx {
			t.Errorf("parsePing(%q) = %+v, %v; want %d/%d", tc.out, st, err, tc.tx, tc.rx)
		}
	}
	if _, err := parsePing("ping: connect: Network is unreachable\n"); err == nil {
		t.Error("parsePing accepted output without a summary")
	}
}

// nsInode returns the inode that identifies a namespace file.
func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var s syscall.Stat_t
	if err := syscall.Stat(path, &s); err != nil {
		t.Fatal(err)
	}
	return s.Ino
}

// rootSnapshot is what the root namespace holds that a lab could touch.
type rootSnapshot struct {
	links  map[string]bool
	routes map[string]bool
	addrs  map[string]bool
}

func snapshotRoot(t *testing.T) rootSnapshot {
	t.Helper()
	s := rootSnapshot{links: map[string]bool{}, routes: map[string]bool{}, addrs: map[string]bool{}}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		s.links[l.Attrs().Name] = true
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		s.routes[r.String()] = true
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		s.addrs[a.IPNet.String()] = true
	}
	return s
}

// labLike reports whether s mentions an address from the lab's ranges.
func labLike(s string) bool {
	return strings.Contains(s, "198.18.") || strings.Contains(s, "198.19.") || strings.Contains(s, "10.244.")
}

// TestLabLeavesRootNamespaceAlone: while a lab runs, the root namespace has
// no new link named like a lab device and no route or address from the
// lab's ranges.
func TestLabLeavesRootNamespaceAlone(t *testing.T) {
	requireRoot(t)
	before := snapshotRoot(t)
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 2, Backend: "host-gw"})
	during := snapshotRoot(t)
	labDevices := map[string]bool{"br0": true, "br1": true, "cni0": true, "rt0": true, "rt1": true, "flannel.1": true, "flannel0": true}
	for _, h := range l.State().Hosts {
		labDevices[h.Name] = true
	}
	for i := 1; i <= 2; i++ {
		labDevices[fmt.Sprintf("vp%d", i)] = true
	}
	for n := range during.links {
		if !before.links[n] && labDevices[n] {
			t.Errorf("root namespace gained link %s", n)
		}
	}
	for r := range during.routes {
		if !before.routes[r] && labLike(r) {
			t.Errorf("root namespace gained route %s", r)
		}
	}
	for a := range during.addrs {
		if !before.addrs[a] && labLike(a) {
			t.Errorf("root namespace gained address %s", a)
		}
	}
}

// TestLabThirtyHosts: a lab big enough that ARP on its underlay would
// crowd the kernel's neighbour table (shared by every namespace) comes up
// with static underlay neighbours, and every pod reaches every other.
func TestLabThirtyHosts(t *testing.T) {
	start := time.Now()
	l := upLab(t, lab.Spec{Hosts: 30, Pods: 1, Backend: "host-gw"})
	t.Logf("30 hosts up and all pairs reachable in %s", time.Since(start).Round(time.Millisecond))
	st := l.State()
	if st.Spec.UnderlayNeighbours != "static" {
		t.Errorf("underlay neighbours %q, want static for 30 hosts", st.Spec.UnderlayNeighbours)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := l.Reachability(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Pods) != 30 || !m.All() {
		t.Fatalf("%d pods; unreachable: %v", len(m.Pods), m.Missing())
	}
	subnets := map[string]bool{}
	for _, h := range st.Hosts {
		if h.Subnet == "" || subnets[h.Subnet] {
			t.Errorf("%s: subnet %q missing or leased twice", h.Name, h.Subnet)
		}
		subnets[h.Subnet] = true
	}
}
