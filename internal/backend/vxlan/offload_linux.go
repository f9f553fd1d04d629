package vxlan

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
)

// txCsumFeature is the ethtool feature users turn off by hand on flannel.1
// ("ethtool -K flannel.1 tx-checksum-ip-generic off").
const txCsumFeature = "tx-checksum-ip-generic"

// csumFixedIn is the first kernel that computes the outer UDP checksum of
// NATed VXLAN packets correctly with offload on (Calico's cut-off, found
// with flannel issue 1279 and Calico issue 3145).
var csumFixedIn = [2]int{5, 7}

// kernelRelease returns the running kernel's major and minor version.
func kernelRelease() (major, minor int, release string, err error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return 0, 0, "", fmt.Errorf("uname: %w", err)
	}
	release = unix.ByteSliceToString(u.Release[:])
	major, minor, ok := parseRelease(release)
	if !ok {
		return 0, 0, release, fmt.Errorf("cannot parse kernel release %q", release)
	}
	return major, minor, release, nil
}

// parseRelease reads "6.18.0-foo" as 6, 18.
func parseRelease(r string) (major, minor int, ok bool) {
	fields := strings.FieldsFunc(r, func(c rune) bool { return c == '.' || c == '-' || c == '+' || c == '_' })
	if len(fields) < 2 {
		return 0, 0, false
	}
	var err1, err2 error
	major, err1 = strconv.Atoi(fields[0])
	minor, err2 = strconv.Atoi(fields[1])
	return major, minor, err1 == nil && err2 == nil
}

// checksumDecision says whether tx checksum offload should be on and why.
func checksumDecision(setting string, major, minor int, release string) (on bool, why string) {
	switch setting {
	case csumOn:
		return true, "TxChecksumOffload is \"on\""
	case csumOff:
		return false, "TxChecksumOffload is \"off\""
	}
	if release == "" {
		return true, "kernel version unknown; leaving offload (and TSO) on"
	}
	if major < csumFixedIn[0] || major == csumFixedIn[0] && minor < csumFixedIn[1] {
		return false, fmt.Sprintf("kernel %s (< %d.%d) corrupts the UDP checksum of VXLAN packets that pass through NAT; offload off (TSO off too, slower)", release, csumFixedIn[0], csumFixedIn[1])
	}
	return true, fmt.Sprintf("kernel %s (>= %d.%d) checksums NATed VXLAN packets correctly; offload (and TSO) left on", release, csumFixedIn[0], csumFixedIn[1])
}

// ensureChecksumOffload applies the checksum offload decision to the device
// with an ethtool ioctl inside the host's namespace, and logs it.
func (b *Backend) ensureChecksumOffload() error {
	major, minor, release, err := kernelRelease()
	if err != nil {
		b.log.Warn("cannot tell the kernel version for the checksum offload decision", "error", err)
		release = ""
	}
	want, why := checksumDecision(b.s.csum, major, minor, release)
	var have, changed bool
	err = netnsutil.Do(b.host.NetNS, func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return fmt.Errorf("ethtool socket: %w", err)
		}
		defer e.Close()
		feats, err := e.Features(b.s.device)
		if err != nil {
			return fmt.Errorf("read features of %s: %w", b.s.device, err)
		}
		have = feats[txCsumFeature]
		if have == want {
			return nil
		}
		if err := e.Change(b.s.device, map[string]bool{txCsumFeature: want}); err != nil {
			return fmt.Errorf("set %s %v on %s: %w", txCsumFeature, want, b.s.device, err)
		}
		changed = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("checksum offload: %w", err)
	}
	state := map[bool]string{true: "on", false: "off"}[want]
	b.log.Info("tx checksum offload "+state, "feature", txCsumFeature, "changed", changed, "reason", why)
	if want {
		b.checkSegmentation()
	}
	return nil
}

// segmentationFeatures are the offloads the tunnel path needs for speed:
// without them every TCP segment is encapsulated on its own (measured here:
// throughput falls to a third).
var segmentationFeatures = []struct{ dev, feature string }{
	{"vxlan", "tx-tcp-segmentation"},
	{"vxlan", "tx-generic-segmentation"},
	{"underlay", "tx-udp_tnl-segmentation"},
}

// checkSegmentation turns segmentation offload back on on the VXLAN device
// if someone turned it off (it is what makes the tunnel fast), and warns
// when the underlay device cannot segment tunnelled packets.
func (b *Backend) checkSegmentation() {
	_ = netnsutil.Do(b.host.NetNS, func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		feats := map[string]map[string]bool{}
		for _, dev := range []struct{ role, name string }{{"vxlan", b.s.device}, {"underlay", b.host.Iface.Name}} {
			if dev.name == "" {
				continue
			}
			if f, err := e.Features(dev.name); err == nil {
				feats[dev.role] = f
			}
		}
		for _, sf := range segmentationFeatures {
			on, known := feats[sf.dev][sf.feature]
			if !known || on {
				continue
			}
			if sf.dev == "vxlan" {
				if err := e.Change(b.s.device, map[string]bool{sf.feature: true}); err != nil {
					b.log.Warn("segmentation offload is off on the VXLAN device and cannot be turned on; throughput will suffer", "feature", sf.feature, "error", err)
				} else {
					b.log.Info("turned segmentation offload back on on the VXLAN device", "feature", sf.feature)
				}
				continue
			}
			b.log.Warn("the underlay device does not segment tunnelled packets; VXLAN throughput will be a fraction of the underlay's", "iface", b.host.Iface.Name, "feature", sf.feature)
		}
		return nil
	})
}
