package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnsutil"
)

// CNIPlugin is the file name of Weft's CNI plugin.
const CNIPlugin = "weft"

// CNIAttacher attaches pods the way a container runtime does: through
// libcni, executing Weft's CNI plugin inside the host's namespace with a
// conflist that points at the host's subnet.env. Allocations and libcni's
// cache live in the lab's directory (<dir>/h<i>/cni, <dir>/h<i>/cni-cache).
type CNIAttacher struct {
	// PluginDir holds the weft plugin (and any plugin chained after it).
	PluginDir string
	// Extra are conflist entries run after weft (e.g. portmap), as JSON
	// objects.
	Extra []string
}

// Name implements [PodAttacher].
func (CNIAttacher) Name() string { return "cni" }

// NetworkName is the network name in the conflist the lab's runtime uses.
const NetworkName = "weft"

// ConfList returns the conflist the attacher runs for host h.
func (a CNIAttacher) ConfList(dir string, h HostState) (*libcni.NetworkConfigList, error) {
	// ipMasq false: in the lab, masquerading is weftd's business
	// (--ip-masq in Spec.HostArgs), whichever attacher made the pods.
	plugins := fmt.Sprintf(`{"type":%q,"subnetFile":%q,"dataDir":%q,"ipMasq":false}`, CNIPlugin, h.SubnetFile, filepath.Join(dir, h.Name, "cni"))
	for _, e := range a.Extra {
		plugins += "," + e
	}
	return libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s]}`, NetworkName, plugins)))
}

// Runtime returns the libcni configuration the attacher uses for host h.
func (a CNIAttacher) Runtime(dir string, h HostState) *libcni.CNIConfig {
	// An explicit exec: libcni's lazy default is not safe for concurrent use.
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir([]string{a.PluginDir}, filepath.Join(dir, h.Name, "cni-cache"), exec)
}

// PodRuntimeConf names the pod's attachment: container id "<lab>-<pod>",
// interface eth0.
func PodRuntimeConf(lab string, p PodState) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: lab + "-" + p.Name, NetNS: filepath.Join(NetnsDir, p.Netns), IfName: "eth0"}
}

// Attach implements [PodAttacher].
func (a CNIAttacher) Attach(ctx context.Context, req PodRequest) (netip.Addr, error) {
	list, err := a.ConfList(req.Dir, req.Host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab: conflist: %w", err)
	}
	// The runtime, not the plugin, brings the pod's loopback up.
	if err := netnsutil.DoNamed(req.Pod.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: lo: %w", req.Pod.Name, err)
	}
	cni := a.Runtime(req.Dir, req.Host)
	var res *types100.Result
	err = netnsutil.DoNamed(req.Host.Netns, func() error {
		r, err := cni.AddNetworkList(ctx, list, PodRuntimeConf(req.Lab, req.Pod))
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: CNI ADD: %w", req.Pod.Name, err)
	}
	if len(res.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: CNI result has no address", req.Pod.Name)
	}
	addr, ok := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if !ok {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: CNI result address %v", req.Pod.Name, res.IPs[0].Address.IP)
	}
	return addr.Unmap(), nil
}

// findCNIPlugin looks for the weft plugin next to weftd, next to weftctl,
// then on $PATH, and returns its directory.
func findCNIPlugin(spec *Spec) (string, bool) {
	for _, dir := range []string{filepath.Dir(spec.Weftd), filepath.Dir(spec.Weftctl)} {
		if st, err := os.Stat(filepath.Join(dir, CNIPlugin)); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return dir, true
		}
	}
	if p, err := exec.LookPath(CNIPlugin); err == nil {
		return filepath.Dir(p), true
	}
	return "", false
}

// defaultAttacher attaches pods through CNI when the weft plugin can be
// found, and with the lab's own netlink code otherwise.
func defaultAttacher(spec *Spec) PodAttacher {
	if dir, ok := findCNIPlugin(spec); ok {
		return CNIAttacher{PluginDir: dir}
	}
	return BridgeAttacher{}
}

// The outside: namespace weft-<name>-out, a port of the underlay's br0 with
// address 198.18.0.253/24, stands for the world beyond the cluster. It has
// no route to the pod network, as a real outside host would not: a pod
// reaches it only with the host's address (masquerade).
var outsideAddr = netip.MustParsePrefix("198.18.0.253/24")

func outsideNS(name string) string { return nsPrefix(name) + "out" }

// Outside returns the outside namespace's name and address.
func (l *Lab) Outside() (netnsName string, addr netip.Addr) {
	return outsideNS(l.state.Name), outsideAddr.Addr()
}

// buildOutside creates the outside namespace on segment 0 of the underlay.
func buildOutside(spec *Spec, set *nsSet) error {
	_, ul, err := set.open(ulNS(spec.Name))
	if err != nil {
		return err
	}
	br0, err := ul.LinkByName("br0")
	if err != nil {
		return fmt.Errorf("lab: br0: %w", err)
	}
	ons, oh, err := set.create(outsideNS(spec.Name))
	if err != nil {
		return err
	}
	eth0, err := addVeth(ul, "out", br0, ons, oh, "eth0", spec.UnderlayMTU)
	if err != nil {
		return err
	}
	if err := ensureAddr(oh, eth0, outsideAddr); err != nil {
		return err
	}
	for _, seg := range spec.Segments {
		if seg == 1 {
			return addRoute(oh, segNet[1], routerAddr[0].Addr())
		}
	}
	return nil
}

// DetachPod runs CNI DEL for a pod attached by a [CNIAttacher].
func (l *Lab) DetachPod(ctx context.Context, a CNIAttacher, pod PodState) error {
	h, err := l.Host(pod.HostIndex)
	if err != nil {
		return err
	}
	list, err := a.ConfList(l.state.Dir, h)
	if err != nil {
		return err
	}
	cni := a.Runtime(l.state.Dir, h)
	return netnsutil.DoNamed(h.Netns, func() error {
		return cni.DelNetworkList(ctx, list, PodRuntimeConf(l.state.Name, pod))
	})
}
