// Package cnitest holds test helpers for the weft CNI plugin: named network
// namespaces that are removed even after a crashed run, plugin binaries
// built for the test, and a libcni runner that executes plugins inside a
// test "host" namespace, the way a container runtime on that host would.
//
// Nothing here is compiled into Weft's binaries.
package cnitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named namespaces are bind-mounted (as by `ip netns`).
const NetnsDir = "/run/netns"

// Prefix starts the name of every namespace Weft's CNI tests create.
const Prefix = "wcn-"

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, bridges and nftables tables")
	}
}

// NSName returns a fresh namespace name "wcn-<kind><pid>-<random>-<suffix>".
// kind separates test packages that may run at the same time ("c" for cni,
// "m" for masq, "e" for e2e); the pid lets [CleanStale] tell a crashed
// run's namespaces from a running one's.
func NSName(kind, suffix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	n := fmt.Sprintf("%s%s%d-%s", Prefix, kind, os.Getpid(), hex.EncodeToString(b[:]))
	if suffix != "" {
		n += "-" + suffix
	}
	return n
}

// CleanStale removes namespaces of this kind left by runs whose process is
// gone.
func CleanStale(kind string) {
	ents, _ := os.ReadDir(NetnsDir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), Prefix+kind)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == nil {
			continue // still running
		}
		_ = DeleteNS(filepath.Join(NetnsDir, e.Name()))
	}
}

// NewNS creates a named network namespace with its loopback up and returns
// its path. The namespace is removed when the test ends.
func NewNS(t testing.TB, name string) string {
	t.Helper()
	path, err := CreateNS(name)
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := DeleteNS(path); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return path
}

// CreateNS creates a named network namespace (bind-mounted under
// [NetnsDir]) with its loopback up, without changing the caller's thread.
func CreateNS(name string) (string, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with this goroutine, so the
		// namespace switch cannot leak into other goroutines.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", err
	}
	h, err := Handle(path)
	if err != nil {
		return path, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	return path, err
}

// DeleteNS unmounts and removes a named namespace. A missing one is fine.
func DeleteNS(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Handle returns a netlink handle bound to the namespace at path.
func Handle(path string) (*netlink.Handle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

// In runs fn on a thread inside the namespace at path. Processes started by
// fn (plugins run by libcni) start in that namespace.
func In(path string, fn func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}

// Plugins are CNI plugin binaries built for a test run.
type Plugins struct {
	// Dir holds weft, and bridge, host-local and portmap when requested.
	Dir string
	// Flannel reports whether Dir also holds flannel's CNI plugin (the
	// last release inside containernetworking/plugins, v0.9.1), for
	// benchmarks against flannel's chain. Its absence is not an error.
	Flannel bool
}

// Build compiles the weft plugin from this module and, with standard set,
// installs the reference plugins (bridge, host-local, portmap v1.9.1; and,
// if it can be fetched, flannel v0.9.1) into a new temporary directory.
// Everything is built with CGO_ENABLED=0, as CNI plugins are released. Call
// it once, from TestMain. WEFT_CNI_PLUGIN_DIR names a directory holding
// prebuilt binaries instead.
func Build(standard bool) (Plugins, error) {
	if d := os.Getenv("WEFT_CNI_PLUGIN_DIR"); d != "" {
		_, err := os.Stat(filepath.Join(d, "flannel"))
		return Plugins{Dir: d, Flannel: err == nil}, nil
	}
	dir, err := os.MkdirTemp("", "weft-cni-plugins-")
	if err != nil {
		return Plugins{}, err
	}
	env := append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "weft"), "github.com/weft-net/weft/cmd/weft")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return Plugins{}, fmt.Errorf("go build weft: %w\n%s", err, out)
	}
	p := Plugins{Dir: dir}
	if !standard {
		return p, nil
	}
	cmd = exec.Command("go", "install",
		"github.com/containernetworking/plugins/plugins/main/bridge@v1.9.1",
		"github.com/containernetworking/plugins/plugins/ipam/host-local@v1.9.1",
		"github.com/containernetworking/plugins/plugins/meta/portmap@v1.9.1")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return Plugins{}, fmt.Errorf("go install reference plugins: %w\n%s", err, out)
	}
	cmd = exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/meta/flannel@v0.9.1")
	cmd.Env = env
	p.Flannel = cmd.Run() == nil
	return p, nil
}

// Runtime plays a container runtime on one host: it runs libcni inside the
// host's namespace, with its own result cache.
type Runtime struct {
	HostNS string // path of the host's namespace
	CNI    *libcni.CNIConfig
}

// NewRuntime returns a runtime for the host namespace at hostNS using the
// plugins in dir and cacheDir for libcni's cache.
func NewRuntime(hostNS, dir, cacheDir string) *Runtime {
	// An explicit exec: libcni sets its default lazily, which races when
	// one CNIConfig serves concurrent calls (as a runtime's does).
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return &Runtime{HostNS: hostNS, CNI: libcni.NewCNIConfigWithCacheDir([]string{dir}, cacheDir, exec)}
}

// Attachment names one container's interface.
func Attachment(containerID, podNS, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, NetNS: podNS, IfName: ifName}
}

// Add runs ADD for the whole list.
func (r *Runtime) Add(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (res types.Result, err error) {
	err = In(r.HostNS, func() error {
		res, err = r.CNI.AddNetworkList(ctx, list, rt)
		return err
	})
	return res, err
}

// Check runs CHECK for the whole list.
func (r *Runtime) Check(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return In(r.HostNS, func() error { return r.CNI.CheckNetworkList(ctx, list, rt) })
}

// Del runs DEL for the whole list.
func (r *Runtime) Del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return In(r.HostNS, func() error { return r.CNI.DelNetworkList(ctx, list, rt) })
}

// Status runs STATUS for the whole list.
func (r *Runtime) Status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return In(r.HostNS, func() error { return r.CNI.GetStatusNetworkList(ctx, list) })
}

// GC runs GC for the whole list with the attachments the runtime still has.
func (r *Runtime) GC(ctx context.Context, list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return In(r.HostNS, func() error {
		return r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	})
}
