package store

import (
	"context"
	"errors"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchLeases keeps the set of leases current and sends it to out after the
// initial load and after every batch of changes, until ctx is done. out
// should have a buffer of one: a snapshot not yet taken is replaced by the
// newer one, so a slow consumer always gets the latest state and never a
// backlog. It uses one prefix watch; after a compaction or an error it
// reloads everything (with backoff on errors). Leases that do not parse are
// skipped with a warning naming their key.
func (s *Store) WatchLeases(ctx context.Context, out chan []lease.Lease) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, out)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("lease watch interrupted; reloading", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
		if errors.Is(err, errWatchCompacted) {
			backoff = 100 * time.Millisecond
		}
	}
}

var errWatchCompacted = errors.New("watch revision compacted")

// watchOnce loads all leases, then follows changes until the watch fails.
func (s *Store) watchOnce(ctx context.Context, out chan []lease.Lease) error {
	resp, err := s.cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	cur := make(map[string]lease.Lease, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		s.apply(cur, string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
	}
	send(out, snapshotOf(cur))

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			return errWatchCompacted
		}
		if err := wr.Err(); err != nil {
			return err
		}
		if len(wr.Events) == 0 {
			continue
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(cur, key)
				continue
			}
			s.apply(cur, key, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision)
		}
		send(out, snapshotOf(cur))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch channel closed")
}

// apply decodes one key into cur, dropping it with a warning when it does
// not parse.
func (s *Store) apply(cur map[string]lease.Lease, key string, value []byte, etcdLease, rev int64) {
	l, err := lease.Decode(key, value)
	if err != nil {
		delete(cur, key)
		s.log.Warn("skipping a lease that does not parse", "key", key, "err", err)
		return
	}
	l.EtcdLease, l.ModRevision = etcdLease, rev
	cur[key] = l
}

func snapshotOf(cur map[string]lease.Lease) []lease.Lease {
	out := make([]lease.Lease, 0, len(cur))
	for _, l := range cur {
		out = append(out, l)
	}
	return out
}

// send replaces whatever snapshot is still waiting in out with snap.
func send(out chan []lease.Lease, snap []lease.Lease) {
	for {
		select {
		case out <- snap:
			return
		default:
		}
		select {
		case <-out:
		default:
		}
	}
}
