package main

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/weft-net/weft/internal/masq"
)

// masquerader connects the agent to internal/masq, logging when the rules
// had to be (re)created.
type masquerader struct{ log *slog.Logger }

func newMasquerader(log *slog.Logger) *masquerader { return &masquerader{log: log} }

// Ensure keeps Weft's masquerade table in place for the host's pods.
func (m *masquerader) Ensure(network, hostSubnet netip.Prefix) error {
	return masq.Ensure(network, hostSubnet)
}

// Keep restores Weft's masquerade table as soon as someone changes it.
func (m *masquerader) Keep(ctx context.Context, network, hostSubnet netip.Prefix) error {
	return masq.Keep(ctx, network, hostSubnet, func(err error) {
		m.log.Warn("masquerade rules changed and could not be restored", "err", err)
	})
}

// Cleanup removes Weft's masquerade table.
func (m *masquerader) Cleanup() error {
	if err := masq.Cleanup(); err != nil {
		return err
	}
	m.log.Info("removed Weft's nftables table", "table", masq.Table)
	return nil
}
