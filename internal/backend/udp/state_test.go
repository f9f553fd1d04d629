package udp

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func TestStateRoundTrip(t *testing.T) {
	n, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := backend.Host{Network: n, PublicIP: testOwnIP, Iface: backend.Iface{MTU: 1500}, StateDir: dir, Netlink: &netlink.Handle{}, Log: slog.New(slog.DiscardHandler)}
	b, err := New(h, n.Backend)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := b.loadState(); st != nil || err != nil {
		t.Fatalf("no state file: %v, %v", st, err)
	}
	tbl, _ := buildTable(n.Network, testOwn, testOwnIP, 8285, []lease.Lease{udpLease("10.244.2.0/24", "198.18.0.12"), udpLease("10.244.3.0/24", "198.18.0.13")})
	if err := b.saveState(tbl); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, stateFile))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, %v", info, err)
	}
	b2, _ := New(h, n.Backend)
	st, err := b2.loadState()
	if err != nil || st == nil {
		t.Fatalf("load: %v, %v", st, err)
	}
	if st.Own != testOwn || len(st.Peers) != 2 || st.Peers[1].PublicIP != netip.MustParseAddr("198.18.0.13") {
		t.Errorf("loaded %+v", st)
	}
	rebuilt, errs := buildTable(n.Network, st.Own, testOwnIP, 8285, st.leases())
	if len(errs) != 0 || rebuilt.lookup(a32("10.244.3.9")) < 0 {
		t.Errorf("table from the saved state: %v", errs)
	}
	// Unchanged peers: nothing written.
	before, _ := os.Stat(filepath.Join(dir, stateFile))
	if err := b2.saveState(rebuilt); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(dir, stateFile))
	if !after.ModTime().Equal(before.ModTime()) {
		t.Error("unchanged state rewritten")
	}
	for name, content := range map[string]string{
		"garbage":       "\x00{not json",
		"other network": `{"network":"10.9.0.0/16","own":"10.9.1.0/24","port":8285,"peers":[]}`,
		"other port":    `{"network":"10.244.0.0/16","own":"10.244.1.0/24","port":9999,"peers":[]}`,
		"IPv6 own":      `{"network":"10.244.0.0/16","own":"fd00::/64","port":8285,"peers":[]}`,
		"no own":        `{"network":"10.244.0.0/16","port":8285,"peers":[]}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if st, err := b2.loadState(); st != nil || err == nil {
			t.Errorf("%s: loaded %+v, %v; want an error", name, st, err)
		}
	}
}
