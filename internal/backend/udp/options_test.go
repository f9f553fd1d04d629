package udp

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
)

func TestOptions(t *testing.T) {
	o, err := parseOptions([]byte(`{"Type":"udp"}`))
	if err != nil || o.Port != 8285 || o.Device != "flannel0" || o.MTU != 0 {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	o, err = parseOptions([]byte(`{"Type":"udp","Port":9000,"MTU":1400,"Device":"weft0"}`))
	if err != nil || o.Port != 9000 || o.Device != "weft0" || o.MTU != 1400 {
		t.Fatalf("set: %+v, %v", o, err)
	}
	for raw, field := range map[string]string{
		`{"Type":"udp","Port":70000}`:                "Backend.Port",
		`{"Type":"udp","Port":-1}`:                   "Backend.Port",
		`{"Type":"udp","Port":"8285"}`:               "Backend.Port",
		`{"Type":"udp","MTU":100}`:                   "Backend.MTU",
		`{"Type":"udp","MTU":70000}`:                 "Backend.MTU",
		`{"Type":"udp","Device":"a/b"}`:              "Backend.Device",
		`{"Type":"udp","Device":"0123456789abcdef"}`: "Backend.Device",
		`{"Type":"udp","Queues":65}`:                 "Backend.Queues",
		`{"Type":"udp","VNI":1}`:                     "Backend.VNI",
	} {
		_, err := parseOptions([]byte(raw))
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: error %v, want a FieldError on %s", raw, err, field)
		}
	}
}

func TestNewMTU(t *testing.T) {
	h := backend.Host{Iface: backend.Iface{Name: "eth0", MTU: 9000}, Netlink: &netlink.Handle{}, Log: slog.New(slog.DiscardHandler)}
	b, err := New(h, []byte(`{"Type":"udp"}`))
	if err != nil || b.mtu != 9000-28 {
		t.Fatalf("MTU %v, %v; want 8972", b, err)
	}
	h.Iface.MTU = 590
	if _, err := New(h, []byte(`{"Type":"udp"}`)); err == nil || !strings.Contains(err.Error(), "Backend.MTU") {
		t.Errorf("tiny underlay MTU: %v, want an error naming Backend.MTU", err)
	}
	if b, err := New(h, []byte(`{"Type":"udp","MTU":1000}`)); err != nil || b.mtu != 1000 {
		t.Errorf("explicit MTU: %v, %v", b, err)
	}
}
