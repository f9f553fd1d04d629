package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A running weftd whose lease disappears from etcd (its key deleted, or its
// etcd lease revoked) takes the same subnet back, and its pods keep
// talking: no other host may have taken the subnet in between.
func TestAgentReacquiresLostLease(t *testing.T) {
	l := upLab(t, lab.Spec{Hosts: 2, Pods: 1, Backend: "host-gw"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := l.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	subnet := subnetOf(t, l, 2)
	h2, err := l.Host(2)
	if err != nil {
		t.Fatal(err)
	}
	current := func() (lease.Lease, bool) {
		ls, err := st.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ls {
			if x.Subnet == subnet {
				return x, true
			}
		}
		return lease.Lease{}, false
	}
	before, ok := current()
	if !ok {
		t.Fatalf("no lease for %s", subnet)
	}
	checkBack := func(what string) lease.Lease {
		t.Helper()
		var got lease.Lease
		eventually(t, 20*time.Second, "h2's lease back after "+what, func() bool {
			x, ok := current()
			got = x
			return ok && x.Attrs.PublicIP.String() == h2.UnderlayIP
		})
		if !processAlive(h2.PID) {
			t.Fatalf("weftd on h2 exited after %s", what)
		}
		dst, _ := l.Pod(2, 1)
		if err := l.Ping(ctx, "h1-p1", dst.IP); err != nil {
			t.Errorf("h1-p1 -> h2-p1 after %s: %v", what, err)
		}
		return got
	}

	// The key deleted by hand.
	if err := st.DeleteLease(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	afterDelete := checkBack("its key was deleted")

	// The etcd lease revoked: the key goes with it.
	if _, err := st.Client().Revoke(ctx, clientv3.LeaseID(afterDelete.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	afterRevoke := checkBack("its etcd lease was revoked")
	if afterRevoke.EtcdLease == before.EtcdLease || afterRevoke.EtcdLease == 0 {
		t.Errorf("re-acquired lease uses etcd lease %x (before %x): want a new, live one", afterRevoke.EtcdLease, before.EtcdLease)
	}
	if subnetOf(t, l, 2) != subnet {
		t.Errorf("h2's subnet.env changed from %s to %s", subnet, subnetOf(t, l, 2))
	}
}
