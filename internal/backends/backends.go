// Package backends lists the datapath backends weftd can run, so that the
// agent and weftctl choose one by the name in the network config without a
// global registry.
package backends

import (
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
)

// Kinds returns every backend Weft has, in no particular order.
func Kinds() []backend.Kind {
	return []backend.Kind{
		hostgw.Kind(),
		udp.Kind(),
		vxlan.Kind(),
	}
}

// Lookup returns the backend named typ.
func Lookup(typ string) (backend.Kind, bool) {
	for _, k := range Kinds() {
		if k.Type == typ {
			return k, true
		}
	}
	return backend.Kind{}, false
}

// Validate checks that the network's backend exists and accepts its options.
func Validate(n *config.Network) error {
	k, ok := Lookup(n.BackendType)
	if !ok {
		var names []string
		for _, k := range Kinds() {
			names = append(names, k.Type)
		}
		return &config.FieldError{Field: "Backend.Type", Msg: "unknown backend " + quote(n.BackendType) + " (known: " + strings.Join(names, ", ") + ")"}
	}
	return k.Validate(n.Backend)
}

func quote(s string) string { return `"` + s + `"` }
