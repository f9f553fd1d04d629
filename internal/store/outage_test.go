package store

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdserver"
	"github.com/weft-net/weft/internal/lease"
)

// etcd goes away and comes back: the watch resumes by itself and a lease
// written after the return is seen promptly (flannel: 8–11 s).
func TestWatchSurvivesEtcdOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("outage test takes a few seconds")
	}
	dir := t.TempDir()
	cfg := etcdserver.Config{DataDir: filepath.Join(dir, "data"), ClientURLs: []string{"unix://" + filepath.Join(dir, "etcd.sock")}}
	ctx := ctxT(t)
	srv, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, cfg.ClientURLs[0])
	set := NewLeaseSet()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.WatchLeases(wctx, set)
	<-set.Changed()

	t0 := time.Now()
	srv.Close()
	t.Logf("etcd stopped in %v", time.Since(t0))
	outage := 5 * time.Second
	time.Sleep(outage) // the outage itself: nothing to await while etcd is down
	t0 = time.Now()
	srv, err = etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	t.Logf("etcd restarted in %v", time.Since(t0))
	writer := newStore(t, cfg.ClientURLs[0])
	written := time.Now()
	if err := writer.PutLeases(ctx, []lease.Lease{{Subnet: netip.MustParsePrefix("10.244.5.0/24"), Attrs: host(5)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case <-set.Changed():
			if got, _ := set.Leases(); len(got) == 1 {
				t.Logf("lease written after a %v etcd outage seen %v after the write", outage, time.Since(written).Round(time.Millisecond))
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatal("lease written after the outage never seen")
		}
	}
}
