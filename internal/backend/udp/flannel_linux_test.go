package udp

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
)

// flannelPeer plays flannel's udp backend on a host: a TUN device without
// the virtio-net header or offloads (so the kernel checks every inner
// checksum it receives), one packet per system call, whatever arrives on
// the port is injected. It is built the way flanneld configures flannel0:
// the subnet's first address with the network's prefix length.
type flannelPeer struct {
	tun  *os.File
	sock *net.UDPConn
	wg   sync.WaitGroup
}

func startFlannelPeer(t *testing.T, tp *topo, h *testHost, peers map[netip.Prefix]netip.Addr) *flannelPeer {
	t.Helper()
	fp := &flannelPeer{}
	err := netnsutil.Do(h.ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("flannel0")
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		fp.tun = os.NewFile(uintptr(fd), "flannel0")
		fp.sock, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(h.ip, DefaultPort)))
		return err
	})
	if err != nil {
		t.Fatalf("flannel-style peer: %v", err)
	}
	run(t, "ip", "-n", h.name, "addr", "add", h.subnet.Addr().String()+"/16", "dev", "flannel0")
	run(t, "ip", "-n", h.name, "link", "set", "flannel0", "mtu", "1472", "up")
	fp.wg.Add(2)
	go func() { // TUN -> UDP, one packet per call
		defer fp.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := fp.tun.Read(buf)
			if err != nil {
				return
			}
			if n < 20 || buf[0]>>4 != 4 {
				continue
			}
			dst := netip.AddrFrom4([4]byte(buf[16:20]))
			for sn, ip := range peers {
				if sn.Contains(dst) {
					fp.sock.WriteToUDPAddrPort(buf[:n], netip.AddrPortFrom(ip, DefaultPort))
				}
			}
		}
	}()
	go func() { // UDP -> TUN, one packet per call
		defer fp.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := fp.sock.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if _, err := fp.tun.Write(buf[:n]); err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
		}
	}()
	t.Cleanup(func() {
		fp.sock.Close()
		fp.tun.Close()
		fp.wg.Wait()
	})
	return fp
}

// TestKernelFlannelInterop: a Weft host and a host running a flannel-style
// udp forwarder reach each other's pods, with pings and a TCP stream. The
// flannel side's kernel verifies the checksum of every inner packet, so the
// stream only flows if the segments Weft splits from TSO super-packets
// carry valid checksums on the wire.
func TestKernelFlannelInterop(t *testing.T) {
	requirePing(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	h1, h2 := tp.hosts[0], tp.hosts[1]
	tp.start(h1)
	startFlannelPeer(t, tp, h2, map[netip.Prefix]netip.Addr{h1.subnet: h1.ip})
	pingEventually(t, h1.pod, h2.podIP)
	pingEventually(t, h2.pod, h1.podIP)
	for _, dir := range []struct{ from, to *testHost }{{h1, h2}, {h2, h1}} {
		g := iperf3(t, dir.from.pod, dir.to.pod, dir.to.podIP.String(), 2)
		t.Logf("TCP %s -> %s: %.2f Gbit/s", dir.from.name, dir.to.name, g)
		if g < 0.05 {
			t.Errorf("TCP %s -> %s: %.3f Gbit/s: the stream does not flow", dir.from.name, dir.to.name, g)
		}
	}
}
