package cni_test

import (
	"context"

	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/cni/cnitest"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/subnetenv"
)

// pluginDir holds the plugin binaries built by TestMain ("" when not root);
// haveFlannel says whether flannel's plugin is among them.
var (
	pluginDir   string
	haveFlannel bool
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		cnitest.CleanStale("c")
		p, err := cnitest.Build(true)
		if err != nil {
			fmt.Fprintln(os.Stderr, "building plugins:", err)
			os.Exit(1)
		}
		pluginDir, haveFlannel = p.Dir, p.Flannel
		code := m.Run()
		if os.Getenv("WEFT_CNI_PLUGIN_DIR") == "" {
			os.RemoveAll(p.Dir)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// testHost is one host: a namespace where the runtime runs plugins, its
// subnet.env and the plugin's data directory.
type testHost struct {
	tb         testing.TB
	ns         string
	dir        string
	subnetFile string
	dataDir    string
	rt         *cnitest.Runtime
}

func newHost(t *testing.T) *testHost {
	t.Helper()
	cnitest.RequireRoot(t)
	dir := t.TempDir()
	h := &testHost{
		tb:         t,
		ns:         cnitest.NewNS(t, cnitest.NSName("c", "host")),
		dir:        dir,
		subnetFile: filepath.Join(dir, "run", "subnet.env"),
		dataDir:    filepath.Join(dir, "data"),
	}
	h.rt = cnitest.NewRuntime(h.ns, pluginDir, filepath.Join(dir, "cache"))
	return h
}

func (h *testHost) writeEnv(subnet string, ipMasq bool) subnetenv.Env {
	h.tb.Helper()
	env := subnetenv.New(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix(subnet), 1450, ipMasq)
	if err := subnetenv.Write(h.subnetFile, env); err != nil {
		h.tb.Fatal(err)
	}
	return env
}

// list returns a conflist with the weft plugin (and extra entries after it).
func (h *testHost) list(version, weftOpts string, extra ...string) *libcni.NetworkConfigList {
	h.tb.Helper()
	if weftOpts != "" {
		weftOpts = "," + weftOpts
	}
	plugins := append([]string{fmt.Sprintf(`{"type":"weft","subnetFile":%q,"dataDir":%q%s}`, h.subnetFile, h.dataDir, weftOpts)}, extra...)
	l, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"weftnet","plugins":[%s]}`, version, strings.Join(plugins, ","))))
	if err != nil {
		h.tb.Fatal(err)
	}
	return l
}

func (h *testHost) pod(name string) string {
	return cnitest.NewNS(h.tb, cnitest.NSName("c", name))
}

func (h *testHost) add(l *libcni.NetworkConfigList, id, podNS string) (*types100.Result, error) {
	res, err := h.rt.Add(context.Background(), l, cnitest.Attachment(id, podNS, "eth0"))
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(res)
}

func (h *testHost) mustAdd(l *libcni.NetworkConfigList, id, podNS string) *types100.Result {
	h.tb.Helper()
	r, err := h.add(l, id, podNS)
	if err != nil {
		h.tb.Fatalf("ADD %s: %v", id, err)
	}
	return r
}

func (h *testHost) del(l *libcni.NetworkConfigList, id, podNS string) error {
	return h.rt.Del(context.Background(), l, cnitest.Attachment(id, podNS, "eth0"))
}

// allocations returns the addresses recorded on disk.
func (h *testHost) allocations() []string {
	ents, _ := os.ReadDir(filepath.Join(h.dataDir, "weftnet"))
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func podAddr(t *testing.T, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %v", len(r.IPs), r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

func ping(t *testing.T, fromNS string, to netip.Addr) error {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(fromNS), "ping", "-c", "1", "-W", "2", to.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w\n%s", to, filepath.Base(fromNS), err, out)
	}
	return nil
}

func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("got %v (%T), want a CNI error", err, err)
	}
	return ce
}

func TestAddCheckDel(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.7.0/24", true)
	l := h.list("1.1.0", "")
	podA, podB := h.pod("a"), h.pod("b")
	ra := h.mustAdd(l, "ctr-a", podA)
	rb := h.mustAdd(l, "ctr-b", podB)
	a, b := podAddr(t, ra), podAddr(t, rb)
	sub := netip.MustParsePrefix("10.244.7.0/24")
	if !sub.Contains(a) || !sub.Contains(b) || a == b || a == netip.MustParseAddr("10.244.7.1") {
		t.Fatalf("addresses %s %s, want two distinct pod addresses in %s", a, b, sub)
	}
	if gw := ra.IPs[0].Gateway.String(); gw != "10.244.7.1" {
		t.Errorf("gateway %s, want 10.244.7.1", gw)
	}

	// The kernel matches the result.
	ph, err := cnitest.Handle(podA)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1450 || eth0.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod eth0: MTU %d up %v, want 1450 and up", eth0.Attrs().MTU, eth0.Attrs().Flags&net.FlagUp != 0)
	}
	routes, _ := ph.RouteList(eth0, netlink.FAMILY_V4)
	if !hasDefaultVia(routes, "10.244.7.1") {
		t.Errorf("pod routes %v lack a default route via 10.244.7.1", routes)
	}
	hh, err := cnitest.Handle(h.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	br, err := hh.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := hh.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.7.1/24" {
		t.Errorf("cni0 addresses %v, want 10.244.7.1/24", addrs)
	}
	// Traffic flows: pod to pod and pod to gateway.
	if err := ping(t, podA, b); err != nil {
		t.Error(err)
	}
	if err := ping(t, podB, netip.MustParseAddr("10.244.7.1")); err != nil {
		t.Error(err)
	}

	// A runtime that retries ADD gets the same attachment back.
	if again := podAddr(t, h.mustAdd(l, "ctr-a", podA)); again != a {
		t.Errorf("second ADD of ctr-a gave %s, want %s", again, a)
	}
	if err := ping(t, podB, a); err != nil {
		t.Error(err)
	}
	if got := h.allocations(); len(got) != 2 {
		t.Errorf("allocations after a repeated ADD: %v, want 2", got)
	}

	if eth0, err = ph.LinkByName("eth0"); err != nil {
		t.Fatal(err)
	}
	ab := a.As4()
	if want := fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", ab[0], ab[1], ab[2], ab[3]); eth0.Attrs().HardwareAddr.String() != want {
		t.Errorf("pod MAC %s, want %s (derived from the address)", eth0.Attrs().HardwareAddr, want)
	}
	routes, _ = ph.RouteList(eth0, netlink.FAMILY_V4)

	ctx := context.Background()
	rtA := cnitest.Attachment("ctr-a", podA, "eth0")
	if err := h.rt.Check(ctx, l, rtA); err != nil {
		t.Fatalf("CHECK of a healthy pod: %v", err)
	}
	// Break the pod's default route: CHECK must say so.
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			if err := ph.RouteDel(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = h.rt.Check(ctx, l, rtA)
	if err == nil || !strings.Contains(err.Error(), "route 0.0.0.0/0") {
		t.Fatalf("CHECK after removing the default route: got %v, want an error naming the route", err)
	}

	if err := h.del(l, "ctr-a", podA); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := ph.LinkByName("eth0"); err == nil {
		t.Error("pod eth0 still exists after DEL")
	}
	if got := h.allocations(); len(got) != 1 || got[0] != b.String() {
		t.Errorf("allocations after DEL of a: %v, want only %s", got, b)
	}
	if err := h.del(l, "ctr-a", podA); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	// DEL after the container's namespace is gone.
	if err := cnitest.DeleteNS(podB); err != nil {
		t.Fatal(err)
	}
	if err := h.del(l, "ctr-b", podB); err != nil {
		t.Errorf("DEL with the namespace gone: %v", err)
	}
	if err := h.del(l, "never-added", ""); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
	// A namespace path whose bind mount is gone (a plain file is left).
	stale := filepath.Join(h.dir, "stale-netns")
	if err := os.WriteFile(stale, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.del(l, "never-added-2", stale); err != nil {
		t.Errorf("DEL with a namespace path that is no namespace: %v", err)
	}
	if got := h.allocations(); len(got) != 0 {
		t.Errorf("allocations left: %v", got)
	}
	links, _ := hh.LinkList()
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok {
			t.Errorf("host veth %s left after DEL", l.Attrs().Name)
		}
	}
}

func hasDefaultVia(routes []netlink.Route, gw string) bool {
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == gw {
			return true
		}
	}
	return false
}

// TestConcurrentAdds runs 50 ADDs on one host at the same moment.
func TestConcurrentAdds(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.9.0/24", true)
	l := h.list("1.1.0", "")
	const n = 50
	pods := make([]string, n)
	for i := range pods {
		pods[i] = h.pod(fmt.Sprint("p", i))
	}
	results := make([]*types100.Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = h.add(l, fmt.Sprint("ctr-", i), pods[i])
		}()
	}
	close(start)
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		a := podAddr(t, results[i])
		if j, dup := seen[a]; dup {
			t.Fatalf("address %s given to pods %d and %d", a, j, i)
		}
		seen[a] = i
	}
	// Every pod holds the address its result names.
	for i := range n {
		ph, err := cnitest.Handle(pods[i])
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := ph.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := ph.AddrList(eth0, netlink.FAMILY_V4)
		ph.Close()
		if len(addrs) != 1 || addrs[0].IP.String() != podAddr(t, results[i]).String() {
			t.Errorf("pod %d has %v, result says %s", i, addrs, podAddr(t, results[i]))
		}
	}
	if got := len(h.allocations()); got != n {
		t.Errorf("%d allocations on disk, want %d", got, n)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.del(l, fmt.Sprint("ctr-", i), pods[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	if got := h.allocations(); len(got) != 0 {
		t.Errorf("allocations left after DEL: %v", got)
	}
}

// TestAddressReuse fills a small subnet, checks that ADD then fails with a
// clear error, and that the address a DEL frees is handed out again.
func TestAddressReuse(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.3.0/29", true) // pods get .2 to .6
	l := h.list("1.1.0", "")
	var addrs []netip.Addr
	var pods []string
	for i := range 5 {
		p := h.pod(fmt.Sprint("r", i))
		pods = append(pods, p)
		addrs = append(addrs, podAddr(t, h.mustAdd(l, fmt.Sprint("ctr-", i), p)))
	}
	extra := h.pod("extra")
	_, err := h.add(l, "ctr-extra", extra)
	if ce := cniError(t, err); ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Msg, "no free address") {
		t.Fatalf("ADD into a full subnet: code %d %q, want code %d about no free address", ce.Code, ce.Msg, types.ErrTryAgainLater)
	}
	if err := h.del(l, "ctr-2", pods[2]); err != nil {
		t.Fatal(err)
	}
	got := podAddr(t, h.mustAdd(l, "ctr-extra", extra))
	if got != addrs[2] {
		t.Fatalf("after DEL of %s, ADD got %s", addrs[2], got)
	}
	if err := ping(t, extra, addrs[0]); err != nil {
		t.Error(err)
	}
}

// TestGC: the runtime lost track of two containers (its cache is gone); GC
// with the attachments it still has frees the others.
func TestGC(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.4.0/24", true)
	l := h.list("1.1.0", "")
	var pods []string
	for i := range 3 {
		p := h.pod(fmt.Sprint("g", i))
		pods = append(pods, p)
		h.mustAdd(l, fmt.Sprint("ctr-", i), p)
	}
	fresh := cnitest.NewRuntime(h.ns, pluginDir, filepath.Join(h.dir, "fresh-cache"))
	if err := fresh.GC(context.Background(), l, []types.GCAttachment{{ContainerID: "ctr-0", IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := h.allocations(); len(got) != 1 {
		t.Fatalf("allocations after GC: %v, want one (ctr-0)", got)
	}
	for i, p := range pods {
		ph, err := cnitest.Handle(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ph.LinkByName("eth0")
		ph.Close()
		if (err == nil) != (i == 0) {
			t.Errorf("pod %d: eth0 present = %t after GC", i, err == nil)
		}
	}
	if err := h.rt.Check(context.Background(), l, cnitest.Attachment("ctr-0", pods[0], "eth0")); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
}

// TestNotReady: before weftd writes subnet.env, STATUS and ADD say weftd is
// not ready; afterwards both work.
func TestNotReady(t *testing.T) {
	h := newHost(t)
	l := h.list("1.1.0", "")
	ctx := context.Background()
	err := h.rt.Status(ctx, l)
	ce := cniError(t, err)
	if ce.Code != types.ErrPluginNotAvailable || !strings.Contains(ce.Msg, "weftd is not ready") || strings.Contains(ce.Msg, "no such file") {
		t.Errorf("STATUS without subnet.env: code %d %q", ce.Code, ce.Msg)
	}
	pod := h.pod("nr")
	_, err = h.add(l, "ctr-nr", pod)
	ce = cniError(t, err)
	if ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Msg, "weftd is not ready") || strings.Contains(ce.Msg, "no such file") {
		t.Errorf("ADD without subnet.env: code %d %q", ce.Code, ce.Msg)
	}
	if got := h.allocations(); len(got) != 0 {
		t.Errorf("failed ADD left allocations %v", got)
	}
	h.writeEnv("10.244.5.0/24", true)
	if err := h.rt.Status(ctx, l); err != nil {
		t.Errorf("STATUS with subnet.env: %v", err)
	}
	h.mustAdd(l, "ctr-nr", pod)
}

// TestOldVersions: configurations of every spec version libcni sends,
// including a single network file without cniVersion (0.1.0), attach a pod
// and detach it.
func TestOldVersions(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.10.0/24", true)
	ctx := context.Background()
	for i, v := range []string{"", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"} {
		ver := ""
		if v != "" {
			ver = fmt.Sprintf(`"cniVersion":%q,`, v)
		}
		c, err := libcni.ConfFromBytes([]byte(fmt.Sprintf(`{%s"name":"weftnet","type":"weft","subnetFile":%q,"dataDir":%q}`, ver, h.subnetFile, h.dataDir)))
		if err != nil {
			t.Fatal(err)
		}
		pod := h.pod(fmt.Sprint("v", i))
		rt := cnitest.Attachment(fmt.Sprint("ctr-v", i), pod, "eth0")
		var res types.Result
		err = cnitest.In(h.ns, func() (err error) { res, err = h.rt.CNI.AddNetwork(ctx, c, rt); return err })
		if err != nil {
			t.Fatalf("version %q: ADD: %v", v, err)
		}
		r := mustResult(t, res)
		if len(r.IPs) != 1 || !netip.MustParsePrefix("10.244.10.0/24").Contains(podAddr(t, r)) {
			t.Errorf("version %q: result %v", v, r)
		}
		if err := cnitest.In(h.ns, func() error { return h.rt.CNI.DelNetwork(ctx, c, rt) }); err != nil {
			t.Errorf("version %q: DEL: %v", v, err)
		}
	}
	if got := h.allocations(); len(got) != 0 {
		t.Errorf("allocations left: %v", got)
	}
}

// TestOptions: with isDefaultGateway false the pod routes only the overlay
// network via the bridge; mtu and bridge override the defaults; hairpin
// mode is set on the host end.
func TestOptions(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.11.0/24", true)
	l := h.list("1.1.0", `"bridge":"weftbr0","delegate":{"isDefaultGateway":false,"mtu":1400,"hairpinMode":true}`)
	pod := h.pod("opt")
	r := h.mustAdd(l, "ctr-opt", pod)
	ph, err := cnitest.Handle(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1400 {
		t.Errorf("pod MTU %d, want 1400", eth0.Attrs().MTU)
	}
	routes, _ := ph.RouteList(eth0, netlink.FAMILY_V4)
	if hasDefaultVia(routes, "10.244.11.1") {
		t.Errorf("pod has a default route with isDefaultGateway false: %v", routes)
	}
	found := false
	for _, rt := range routes {
		if rt.Dst != nil && rt.Dst.String() == "10.244.0.0/16" && rt.Gw.String() == "10.244.11.1" {
			found = true
		}
	}
	if !found {
		t.Errorf("pod routes %v lack 10.244.0.0/16 via 10.244.11.1", routes)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "10.244.0.0/16" {
		t.Errorf("result routes %v, want only 10.244.0.0/16", r.Routes)
	}
	hh, err := cnitest.Handle(h.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if _, err := hh.LinkByName("weftbr0"); err != nil {
		t.Errorf("bridge weftbr0: %v", err)
	}
	if _, err := hh.LinkByName("cni0"); err == nil {
		t.Error("cni0 was created although the configuration names weftbr0")
	}
	if err := h.rt.Check(context.Background(), l, cnitest.Attachment("ctr-opt", pod, "eth0")); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// TestLeaseChange: weftd got another subnet (say, after its lease expired
// while the host was down). The next ADD moves the bridge's gateway to the
// new subnet, the new pod gets an address from it, and CHECK of a pod from
// the old subnet says so.
func TestLeaseChange(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.12.0/24", true)
	l := h.list("1.1.0", "")
	oldPod := h.pod("old")
	h.mustAdd(l, "ctr-old", oldPod)
	h.writeEnv("10.244.13.0/24", true)
	newPod := h.pod("new")
	a := podAddr(t, h.mustAdd(l, "ctr-new", newPod))
	if !netip.MustParsePrefix("10.244.13.0/24").Contains(a) {
		t.Errorf("new pod got %s, want an address in 10.244.13.0/24", a)
	}
	hh, err := cnitest.Handle(h.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	br, err := hh.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := hh.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.13.1/24" {
		t.Errorf("cni0 addresses %v, want only 10.244.13.1/24", addrs)
	}
	err = h.rt.Check(context.Background(), l, cnitest.Attachment("ctr-old", oldPod, "eth0"))
	if err == nil || !strings.Contains(err.Error(), "not in this host's subnet") {
		t.Errorf("CHECK of a pod of the old subnet: %v", err)
	}
	if err := ping(t, newPod, netip.MustParseAddr("10.244.13.1")); err != nil {
		t.Error(err)
	}
}

// TestMasqueradeByPlugin: weftd does not masquerade (FLANNEL_IPMASQ=false),
// so ADD makes sure Weft's table is there; CHECK notices when it is gone,
// and the next ADD puts it back.
func TestMasqueradeByPlugin(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.14.0/24", false)
	l := h.list("1.1.0", "")
	pod := h.pod("mq")
	h.mustAdd(l, "ctr-mq", pod)
	ctx := context.Background()
	rt := cnitest.Attachment("ctr-mq", pod, "eth0")
	if err := h.rt.Check(ctx, l, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := cnitest.In(h.ns, masq.Cleanup); err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Check(ctx, l, rt); err == nil || !strings.Contains(err.Error(), "masquerade") {
		t.Errorf("CHECK without Weft's table: %v", err)
	}
	h.mustAdd(l, "ctr-mq2", h.pod("mq2"))
	if err := h.rt.Check(ctx, l, rt); err != nil {
		t.Errorf("CHECK after the next ADD restored the table: %v", err)
	}
}

// TestBadNetConf: a missing or wrong field gives a CNI error naming it.
func TestBadNetConf(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.6.0/24", true)
	pod := h.pod("bad")
	for _, tc := range []struct {
		conf  string
		code  uint
		field string
	}{
		{`{"cniVersion":"1.1.0","type":"weft"}`, types.ErrInvalidNetworkConfig, "name"},
		{`{"cniVersion":"1.1.0","name":"weftnet","type":"weft","mtu":"1400"}`, types.ErrInvalidNetworkConfig, `"mtu"`},
		{`{"cniVersion":"1.1.0","name":"weftnet","type":"weft","delegate":{"isDefaultGateway":"yes"}}`, types.ErrInvalidNetworkConfig, `"delegate.isDefaultGateway"`},
		{`{"cniVersion":"1.1.0","name":"weftnet","type":"weft","dataDir":"data"}`, types.ErrInvalidNetworkConfig, `"dataDir"`},
		{`{"cniVersion":"1.1.0","name":"weftnet","type":"weft","delegate":{"type":"macvlan"}}`, types.ErrUnsupportedField, `"delegate.type"`},
	} {
		c, err := libcni.ConfFromBytes([]byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		err = cnitest.In(h.ns, func() error {
			_, err := h.rt.CNI.AddNetwork(context.Background(), c, cnitest.Attachment("ctr-bad", pod, "eth0"))
			return err
		})
		ce := cniError(t, err)
		if ce.Code != tc.code || !strings.Contains(ce.Msg, tc.field) {
			t.Errorf("%s: code %d %q, want code %d naming %s", tc.conf, ce.Code, ce.Msg, tc.code, tc.field)
		}
	}
}

// TestFlannelConflistWithPortmap takes kube-flannel's conflist, changes the
// type to weft (and points the files at the test's directory), and checks
// that the pod gets its routes and hairpin mode and that portmap forwards a
// host port to it.
func TestFlannelConflistWithPortmap(t *testing.T) {
	h := newHost(t)
	h.writeEnv("10.244.8.0/24", false) // weftd does not masquerade: the plugin does
	conf := fmt.Sprintf(`{
	  "name": "cbr0",
	  "cniVersion": "0.3.1",
	  "plugins": [
	    {"type": "weft", "subnetFile": %q, "dataDir": %q,
	     "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
	    {"type": "portmap", "capabilities": {"portMappings": true}}
	  ]
	}`, h.subnetFile, h.dataDir)
	l, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	pod := h.pod("pm")
	rt := cnitest.Attachment("ctr-pm", pod, "eth0")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	ctx := context.Background()
	res, err := h.rt.Add(ctx, l, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if res.Version() != "0.3.1" {
		t.Errorf("result version %s, want 0.3.1", res.Version())
	}
	hh, err := cnitest.Handle(h.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	links, _ := hh.LinkList()
	hairpin := false
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok {
			pi, err := hh.LinkGetProtinfo(l)
			hairpin = err == nil && pi.Hairpin
		}
	}
	if !hairpin {
		t.Error("host veth is not in hairpin mode")
	}
	// ipMasq defaulted on because FLANNEL_IPMASQ=false: the plugin made
	// Weft's table in the host namespace.
	var rules []string
	if err := cnitest.In(h.ns, func() (err error) { rules, err = masq.Rules(); return err }); err != nil {
		t.Fatal(err)
	}
	if len(rules) != 4 {
		t.Errorf("masquerade rules in the host namespace: %q, want Weft's four", rules)
	}

	// A client outside the host reaches the pod through host port 8080.
	client := h.pod("client")
	link(t, hh, client, "198.18.77.1/24", "198.18.77.2/24")
	podIP := mustResult(t, res).IPs[0].Address.IP.String()
	var ln net.Listener
	if err := cnitest.In(pod, func() (err error) { ln, err = net.Listen("tcp", podIP+":80"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				b := make([]byte, 5)
				if _, err := io.ReadFull(c, b); err == nil {
					_, _ = c.Write([]byte("pong:" + string(b)))
				}
			}()
		}
	}()
	exchange := func(from string) (string, error) {
		var reply []byte
		err := cnitest.In(from, func() error {
			c, err := net.DialTimeout("tcp", "198.18.77.1:8080", 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
			reply, err = io.ReadAll(c)
			return err
		})
		return string(reply), err
	}
	if reply, err := exchange(client); err != nil || reply != "pong:hello" {
		t.Fatalf("client through host port 8080: reply %q, %v", reply, err)
	}
	// Hairpin: the pod reaches itself through the host port, which needs
	// the bridge to send the frame back out of the port it came in on.
	if reply, err := exchange(pod); err != nil || reply != "pong:hello" {
		t.Errorf("pod to itself through host port 8080 (hairpin): reply %q, %v", reply, err)
	}
	if err := h.rt.Del(ctx, l, rt); err != nil {
		t.Errorf("DEL: %v", err)
	}
}

func mustResult(t *testing.T, r types.Result) *types100.Result {
	t.Helper()
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// link connects the host namespace (handle hh) to another namespace with a
// veth pair: hostAddr on the host side, peerAddr on the other, which gets a
// default route via the host.
func link(t *testing.T, hh *netlink.Handle, other, hostAddr, peerAddr string) {
	t.Helper()
	o, err := ns.GetNS(other)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "wcnul0"
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "wcnul1", PeerNamespace: netlink.NsFd(int(o.Fd()))}); err != nil {
		t.Fatal(err)
	}
	hl, _ := hh.LinkByName("wcnul0")
	a, _ := netlink.ParseAddr(hostAddr)
	if err := hh.AddrAdd(hl, a); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	oh, err := cnitest.Handle(other)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	ol, err := oh.LinkByName("wcnul1")
	if err != nil {
		t.Fatal(err)
	}
	a, _ = netlink.ParseAddr(peerAddr)
	if err := oh.AddrAdd(ol, a); err != nil {
		t.Fatal(err)
	}
	if err := oh.LinkSetUp(ol); err != nil {
		t.Fatal(err)
	}
	gw, _ := netip.ParsePrefix(hostAddr)
	if err := oh.RouteAdd(&netlink.Route{LinkIndex: ol.Attrs().Index, Gw: gw.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
}
