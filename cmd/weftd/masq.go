package main

import (
	"log/slog"
	"net/netip"
)

// masquerader adapts the masquerade rules to the agent. It is replaced by
// internal/masq once that lands.
type masquerader struct{ log *slog.Logger }

func newMasquerader(log *slog.Logger) *masquerader { return &masquerader{log: log} }

// Ensure is a placeholder.
func (m *masquerader) Ensure(network, hostSubnet netip.Prefix) error { return nil }

// Cleanup is a placeholder.
func (m *masquerader) Cleanup() error { return nil }
