package masq

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// settle is how long Keep waits after a change to Weft's table before it
// checks the table, so that one transaction's burst of events (a table,
// a chain, four rules) costs one check.
const settle = 50 * time.Millisecond

// Keep ensures the table (see [Ensure]) and then keeps it: it listens to
// nftables' change notifications in the current namespace and re-ensures
// the table as soon as anyone changes or deletes it, instead of waiting for
// the next resync. It returns nil when ctx is done, or an error when the
// first Ensure or the notification socket fails; failures of later
// Ensure calls go to report (which may be nil) and Keep carries on.
//
// Keep must be called from the namespace it guards, and the goroutine that
// calls it must stay there (weftd runs wholly inside its host namespace).
func Keep(ctx context.Context, network, hostSubnet netip.Prefix, report func(error)) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masq: nftables: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	events, err := c.AddMonitor(mon)
	if err != nil {
		return fmt.Errorf("masq: nftables notifications: %w", err)
	}
	defer func() {
		_ = mon.Close()
		for range events { // drain until the monitor's goroutine is done
		}
	}()
	// Listen first, then write: a change made between the two is seen.
	if err := Ensure(network, hostSubnet); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("masq: nftables notifications stopped")
			}
			if touchesOurs(ev) {
				timer.Reset(settle)
			}
		case <-timer.C:
			if err := Ensure(network, hostSubnet); err != nil && report != nil {
				report(err)
			}
		}
	}
}

// touchesOurs reports whether an event may have changed Weft's table. An
// event that could not be decoded (or a lost one) counts as a change.
func touchesOurs(ev *nftables.MonitorEvent) bool {
	if ev.Error != nil || ev.Type == nftables.MonitorEventTypeOOB {
		return true
	}
	var t *nftables.Table
	switch d := ev.Data.(type) {
	case *nftables.Table:
		t = d
	case *nftables.Chain:
		t = d.Table
	case *nftables.Rule:
		t = d.Table
	default:
		return false
	}
	return t != nil && t.Name == Table && t.Family == nftables.TableFamilyIPv4
}
