package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// tunDevice is one attached queue of the TUN device.
type tunDevice struct {
	tun.Device
	name string
}

// tunQueues is the TUN device's attached queues: the kernel spreads the
// packets it routes into the device over them by flow, so each queue's
// reader works on its own flows.
type tunQueues []*tunDevice

// Close detaches every queue; the device stays.
func (q tunQueues) Close() error {
	var errs []error
	for _, d := range q {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}

// openTUN creates the persistent TUN device name inside ns, or attaches to
// it if it exists, with up to queues queues (IFF_MULTI_QUEUE), each with
// the virtio-net header (wireguard-go then turns on TSO and USO). A
// single-queue device left by an earlier weftd is attached as it is, with
// one queue, rather than deleted under the traffic it carries. The device
// outlives the returned handles: closing them only detaches.
func openTUN(ns netns.NsHandle, name string, mtu, queues int) (tunQueues, error) {
	var q tunQueues
	err := netnsutil.Do(ns, func() error {
		multi := queues > 1
		for i := 0; i < queues; i++ {
			f, err := attachQueue(name, multi, i == 0)
			if err != nil && i == 0 && multi && errors.Is(err, unix.EINVAL) {
				// An existing single-queue device.
				multi, queues = false, 1
				f, err = attachQueue(name, false, true)
			}
			if err != nil {
				q.Close()
				return err
			}
			// CreateTUNFromFile opens its netlink listener and sets the MTU
			// here, inside the namespace.
			dev, err := tun.CreateTUNFromFile(f, mtu)
			if err != nil {
				f.Close()
				q.Close()
				return fmt.Errorf("TUN device %s: %w", name, err)
			}
			q = append(q, &tunDevice{Device: dev, name: name})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, d := range q {
		// Events must be drained or the device's listeners block; the
		// channel is closed by Close.
		go func() {
			for range d.Events() {
			}
		}()
	}
	return q, nil
}

// attachQueue opens /dev/net/tun and attaches it to the device name
// (creating the device if needed), making the device persistent when
// persist is set.
func attachQueue(name string, multi, persist bool) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("attach TUN device %s: another process holds it (is flanneld or another weftd running?): %w", name, err)
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EEXIST):
			return nil, fmt.Errorf("attach TUN device %s: a device of that name exists and is not a TUN device of this kind: %w", name, err)
		}
		return nil, fmt.Errorf("attach TUN device %s: %w", name, err)
	}
	if persist {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("make TUN device %s persistent: %w", name, err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// openBind opens the UDP socket(s) on port inside ns, with UDP GSO and GRO
// where the kernel allows. It returns one receive function per address
// family (IPv4 first when present).
func openBind(ns netns.NsHandle, port uint16) (conn.Bind, []conn.ReceiveFunc, error) {
	bind := conn.NewStdNetBind()
	var fns []conn.ReceiveFunc
	err := netnsutil.Do(ns, func() error {
		var err error
		fns, _, err = bind.Open(port)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return bind, fns, nil
}

// setSysctl writes value to /proc/sys/<key> inside ns (the files under
// /proc/sys/net belong to the namespace of the thread that opens them).
func setSysctl(ns netns.NsHandle, key, value string) error {
	return netnsutil.Do(ns, func() error {
		path := "/proc/sys/" + key
		cur, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(cur)) == value {
			return nil
		}
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
		}
		return nil
	})
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
