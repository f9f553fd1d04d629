// Command weft is Weft's CNI plugin. Container runtimes execute it (through
// libcni) to attach a container to the host's Weft network; the work is done
// in internal/cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/internal/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, cni.About)
}
