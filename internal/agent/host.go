package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"golang.org/x/sys/unix"
)

// findIface resolves --iface: an interface name, one of its IPv4
// addresses, or (empty) the interface of the default route.
func findIface(h *netlink.Handle, spec string) (backend.Iface, error) {
	var link netlink.Link
	var err error
	switch ip, perr := netip.ParseAddr(spec); {
	case spec == "":
		link, err = defaultRouteLink(h)
	case perr == nil:
		link, err = linkWithAddr(h, ip)
	default:
		link, err = h.LinkByName(spec)
		if err != nil {
			err = fmt.Errorf("--iface %s: %w", spec, err)
		}
	}
	if err != nil {
		return backend.Iface{}, err
	}
	attrs := link.Attrs()
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return backend.Iface{}, fmt.Errorf("addresses of %s: %w", attrs.Name, err)
	}
	iface := backend.Iface{Name: attrs.Name, Index: attrs.Index, MTU: attrs.MTU}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && a.Scope == unix.RT_SCOPE_UNIVERSE {
			if wanted, err := netip.ParseAddr(spec); err == nil && wanted != ip {
				continue
			}
			iface.Addr = ip
			break
		}
	}
	if !iface.Addr.IsValid() {
		return backend.Iface{}, fmt.Errorf("interface %s has no global IPv4 address", attrs.Name)
	}
	return iface, nil
}

func defaultRouteLink(h *netlink.Handle) (netlink.Link, error) {
	rs, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range rs {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
			return h.LinkByIndex(r.LinkIndex)
		}
	}
	return nil, errors.New("no default route to pick the underlay interface from; set --iface")
}

func linkWithAddr(h *netlink.Handle, ip netip.Addr) (netlink.Link, error) {
	addrs, err := h.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == ip {
			return h.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("--iface %s: no interface has this address", ip)
}

// ensureIPForward turns on IPv4 forwarding in weftd's network namespace:
// without it the host drops pod traffic to and from other hosts.
func ensureIPForward(log *slog.Logger) error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return err
	}
	log.Info("enabled IPv4 forwarding (net.ipv4.ip_forward=1)")
	return nil
}
