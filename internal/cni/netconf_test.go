package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

func TestParseNetConfDefaults(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != DefaultBridge || c.DataDir != DefaultDataDir || c.SubnetFile != "/run/flannel/subnet.env" ||
		c.MTU != 0 || c.HairpinMode || !c.IsDefaultGateway || c.IPMasq != nil {
		t.Errorf("defaults: got %+v", c)
	}
}

// TestParseFlannelConflistEntry reads the plugin entry of kube-flannel's
// conflist with only its type changed.
func TestParseFlannelConflistEntry(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"0.3.1","name":"cbr0","type":"weft",
		"subnetFile":"/tmp/x/subnet.env","dataDir":"/tmp/x/data","ipMasq":false,
		"delegate":{"hairpinMode":true,"isDefaultGateway":false,"bridge":"cbr1","mtu":1400,"type":"bridge","isGateway":true,"forceAddress":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.HairpinMode || c.IsDefaultGateway || c.Bridge != "cbr1" || c.MTU != 1400 ||
		c.SubnetFile != "/tmp/x/subnet.env" || c.DataDir != "/tmp/x/data" || c.IPMasq == nil || *c.IPMasq {
		t.Errorf("got %+v", c)
	}
}

func TestParseNetConfErrors(t *testing.T) {
	for _, tc := range []struct {
		conf  string
		code  uint
		field string
	}{
		{`{"cniVersion":"1.1.0","type":"weft"}`, types.ErrInvalidNetworkConfig, `"name"`},
		{`{"cniVersion":"1.1.0","name":"n","mtu":"big"}`, types.ErrInvalidNetworkConfig, `"mtu"`},
		{`{"cniVersion":"1.1.0","name":"n","mtu":20}`, types.ErrInvalidNetworkConfig, `"mtu"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"mtu":70000}}`, types.ErrInvalidNetworkConfig, `"delegate.mtu"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"bridge":7}}`, types.ErrInvalidNetworkConfig, `"delegate.bridge"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"bridge":"a-very-long-bridge-name"}}`, types.ErrInvalidNetworkConfig, `"delegate.bridge"`},
		{`{"cniVersion":"1.1.0","name":"n","bridge":"cni0","delegate":{"bridge":"cni1"}}`, types.ErrInvalidNetworkConfig, `"delegate.bridge"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"hairpinMode":"yes"}}`, types.ErrInvalidNetworkConfig, `"delegate.hairpinMode"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"type":"ipvlan"}}`, types.ErrUnsupportedField, `"delegate.type"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"ipam":{"type":"host-local"}}}`, types.ErrUnsupportedField, `"delegate.ipam"`},
		{`{"cniVersion":"1.1.0","name":"n","delegate":{"isGateway":false}}`, types.ErrUnsupportedField, `"delegate.isGateway"`},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local"}}`, types.ErrUnsupportedField, `"ipam"`},
		{`{"cniVersion":"1.1.0","name":"n","dataDir":"relative/dir"}`, types.ErrInvalidNetworkConfig, `"dataDir"`},
		{`{"cniVersion":"1.1.0","name":"n","subnetFile":""}`, types.ErrInvalidNetworkConfig, `"subnetFile"`},
		{`{"cniVersion":"1.1.0","name":"n","subnetFile":5}`, types.ErrInvalidNetworkConfig, `"subnetFile"`},
		{`{"cniVersion":"1.1.0","name":"../etc"}`, types.ErrInvalidNetworkConfig, `"name"`},
		{`{"cniVersion":"1.1.0","name":"n",`, types.ErrDecodingFailure, `not valid JSON`},
	} {
		_, err := ParseNetConf([]byte(tc.conf))
		var ce *types.Error
		if !errors.As(err, &ce) {
			t.Errorf("%s: got %v, want a CNI error", tc.conf, err)
			continue
		}
		if ce.Code != tc.code || !strings.Contains(ce.Msg, tc.field) {
			t.Errorf("%s: got code %d %q, want code %d naming %s", tc.conf, ce.Code, ce.Msg, tc.code, tc.field)
		}
	}
}

// FuzzParseNetConf: stdin is untrusted; parsing must never panic and must
// fail only with a CNI error.
func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"weft"}`))
	f.Add([]byte(`{"name":"cbr0","delegate":{"hairpinMode":true,"isDefaultGateway":true,"mtu":1400}}`))
	f.Add([]byte(`{"name":"n","prevResult":{"ips":[]},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseNetConf(data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) {
				t.Fatalf("non-CNI error %T: %v", err, err)
			}
			return
		}
		if c.Name == "" || c.Bridge == "" || c.DataDir == "" || (c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535)) {
			t.Fatalf("accepted an invalid configuration: %+v", c)
		}
	})
}

// FuzzPrevResult: CHECK decodes prevResult from stdin, which is untrusted;
// decoding and looking up the container's address must never panic.
func FuzzPrevResult(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"interface":0,"address":"10.244.7.5/24","gateway":"10.244.7.1"}]}}`))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"n","prevResult":{"cniVersion":"0.3.1","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","interface":7,"address":"10.244.7.5/24"}]}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"interface":-1,"address":"::1/128"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseNetConf(data)
		if err != nil || c.RawPrevResult == nil {
			return
		}
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return
		}
		r, err := types100.NewResultFromResult(c.PrevResult)
		if err != nil {
			return
		}
		if p, ok := resultAddr(r, "eth0"); ok && !p.Addr().Is4() {
			t.Fatalf("resultAddr returned a non-IPv4 address %s", p)
		}
	})
}

func TestGCAttachmentKeys(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	if err != nil || !c.HasAttachments || len(c.ValidAttachments) != 1 || c.ValidAttachments[0].ContainerID != "a" {
		t.Errorf("old key: %+v %v", c, err)
	}
	c, err = ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[]}`))
	if err != nil || !c.HasAttachments || len(c.ValidAttachments) != 0 {
		t.Errorf("empty list: %+v %v", c, err)
	}
	// GC without any list is refused before anything is read or freed.
	dir := t.TempDir()
	p := &Plugin{}
	err = p.GC(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","name":"n","dataDir":"` + dir + `"}`)})
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig || !strings.Contains(ce.Msg, "cni.dev/valid-attachments") {
		t.Errorf("GC without attachments: %v", err)
	}
}
