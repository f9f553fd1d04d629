package lab

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestSpecNormalize(t *testing.T) {
	ok := Spec{Name: "demo", Hosts: 3, Pods: 2, Backend: "host-gw"}
	if err := ok.normalize(); err != nil {
		t.Fatal(err)
	}
	if ok.Network != DefaultNetwork || ok.ResyncPeriod != DefaultResyncPeriod || ok.UnderlayMTU != 1500 {
		t.Errorf("defaults not filled: %+v", ok)
	}
	if got := string(ok.networkConfig()); got != `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}` {
		t.Errorf("network config %s", got)
	}
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "Demo", Hosts: 1, Backend: "vxlan"}, "name"},
		{Spec{Name: "a-b", Hosts: 1, Backend: "vxlan"}, "name"},
		{Spec{Name: "", Hosts: 1, Backend: "vxlan"}, "name"},
		{Spec{Name: "abcdefghijklmnopq", Hosts: 1, Backend: "vxlan"}, "name"},
		{Spec{Name: "x", Hosts: 0, Backend: "vxlan"}, "hosts"},
		{Spec{Name: "x", Hosts: MaxHosts + 1, Backend: "vxlan"}, "hosts"},
		{Spec{Name: "x", Hosts: 1, Pods: -1, Backend: "vxlan"}, "pods"},
		{Spec{Name: "x", Hosts: 1, Backend: "vxlan", Network: "fd00::/64"}, "network"},
		{Spec{Name: "x", Hosts: 1, Backend: "vxlan", Network: "nope"}, "network"},
		{Spec{Name: "x", Hosts: 1}, "backend"},
		{Spec{Name: "x", Hosts: 1, Backend: "vxlan", BackendConfig: json.RawMessage(`{"Type":"udp"}`)}, "disagrees"},
		{Spec{Name: "x", Hosts: 1, Backend: "vxlan", BackendConfig: json.RawMessage(`[1]`)}, "backend config"},
		{Spec{Name: "x", Hosts: 1, Backend: "vxlan", BackendConfig: json.RawMessage(`{"Type":7}`)}, "Type"},
		{Spec{Name: "x", Hosts: 2, Backend: "vxlan", HostArgs: map[int][]string{3: {"--ip-masq"}}}, "host args"},
		{Spec{Name: "x", Hosts: 2, Backend: "vxlan", Segments: map[int]int{2: 2}}, "segment"},
		{Spec{Name: "x", Hosts: 2, Backend: "vxlan", Segments: map[int]int{0: 1}}, "segments"},
		{Spec{Name: "x", Hosts: 2, Backend: "vxlan", UnderlayMTU: 100}, "MTU"},
		{Spec{Name: "x", Hosts: 2, Backend: "vxlan", UnderlayNeighbours: "ndp"}, "underlay neighbours"},
	} {
		err := tc.spec.normalize()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("normalize(%+v) = %v, want an error about %q", tc.spec, err, tc.want)
		}
	}
}

func TestBackendObject(t *testing.T) {
	for _, tc := range []struct {
		typ, raw, want string
	}{
		{"vxlan", "", `{"Type":"vxlan"}`},
		{"", `{"Type":"udp","Port":8285}`, `{"Port":8285,"Type":"udp"}`},
		{"vxlan", `{"VNI":4}`, `{"Type":"vxlan","VNI":4}`},
		{"vxlan", `{"Type":"vxlan","DirectRouting":true}`, `{"DirectRouting":true,"Type":"vxlan"}`},
	} {
		got, err := backendObject(tc.typ, json.RawMessage(tc.raw))
		if err != nil {
			t.Errorf("backendObject(%q, %s): %v", tc.typ, tc.raw, err)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("backendObject(%q, %s) = %s, want %s", tc.typ, tc.raw, got, tc.want)
		}
	}
}

func TestUnderlayAddresses(t *testing.T) {
	s := Spec{Name: "x", Hosts: 3, Backend: "host-gw", Segments: map[int]int{3: 1}}
	if err := s.normalize(); err != nil {
		t.Fatal(err)
	}
	for i, want := range map[int]string{1: "198.18.0.11", 2: "198.18.0.12", 3: "198.18.1.13"} {
		if got := s.underlayIP(i).String(); got != want {
			t.Errorf("host %d: %s, want %s", i, got, want)
		}
	}
	if hostNS("x", 2) != "weft-x-h2" || podNS("x", 2, 3) != "weft-x-h2-p3" || ulNS("x") != "weft-x-ul" {
		t.Error("namespace names changed: tests and docs rely on weft-<lab>-h<i>[-p<j>]")
	}
}

// TestStatusJSON pins the field names of `weftctl lab status --json`.
func TestStatusJSON(t *testing.T) {
	s := State{
		Name: "demo", Etcd: EtcdSocketURL("demo"), EtcdUnderlay: EtcdURL,
		Hosts: []HostState{{Index: 1, Name: "h1", Netns: "weft-demo-h1", UnderlayIP: "198.18.0.11", Subnet: "10.244.3.0/24", SubnetFile: "/run/weft/lab/demo/h1/subnet.env", PID: -1}},
		Pods:  []PodState{{Name: "h1-p1", Netns: "weft-demo-h1-p1", Host: "h1", HostIndex: 1, Index: 1, IP: "10.244.3.2"}},
		Spec:  Spec{Backend: "host-gw"},
	}
	var b bytes.Buffer
	if err := s.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Name  string           `json:"name"`
		Etcd  string           `json:"etcd"`
		Hosts []map[string]any `json:"hosts"`
		Pods  []map[string]any `json:"pods"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Name != "demo" || doc.Etcd != "unix:///run/weft/lab/demo/etcd.sock" {
		t.Errorf("name/etcd: %s", b.String())
	}
	for _, k := range []string{"name", "netns", "underlay_ip", "subnet", "subnet_file", "pid"} {
		if _, ok := doc.Hosts[0][k]; !ok {
			t.Errorf("host lacks %q: %s", k, b.String())
		}
	}
	if doc.Hosts[0]["pid"] != float64(0) {
		t.Errorf("a dead weftd must show pid 0, got %v", doc.Hosts[0]["pid"])
	}
	for _, k := range []string{"name", "netns", "host", "ip"} {
		if _, ok := doc.Pods[0][k]; !ok {
			t.Errorf("pod lacks %q: %s", k, b.String())
		}
	}
	var tb bytes.Buffer
	m := &Matrix{Pods: append(s.Pods, PodState{Name: "h2-p1", IP: "10.244.4.2"}), OK: [][]bool{{true, true}, {false, true}}}
	if err := s.WriteTable(&tb, m); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tb.String(), "FAIL") || !strings.Contains(tb.String(), "1/2 pod pairs reachable") {
		t.Errorf("table:\n%s", tb.String())
	}
	if m.All() || len(m.Missing()) != 1 {
		t.Errorf("matrix: All=%v Missing=%v", m.All(), m.Missing())
	}
}

// TestUpRefusesBadConfigFirst: a bad backend or option is refused with the
// field named, before anything is created.
func TestUpRefusesBadConfigFirst(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "zbadcfg", Hosts: 1, Backend: "nope"}, "Backend.Type"},
		{Spec{Name: "zbadcfg", Hosts: 1, Backend: "vxlan", BackendConfig: json.RawMessage(`{"VNI":"x"}`)}, "Backend.VNI"},
		{Spec{Name: "zbadcfg", Hosts: 1, Backend: "host-gw", Network: "10.0.0.0/30"}, "Network"},
	} {
		_, err := Up(t.Context(), tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Up(%+v) = %v, want an error naming %s", tc.spec, err, tc.want)
		}
		if exists, _ := Exists("zbadcfg"); exists {
			t.Fatalf("Up left something of lab zbadcfg behind")
		}
	}
}

func TestUnderlayNeighboursAuto(t *testing.T) {
	for _, tc := range []struct {
		hosts, pods int
		mode, want  string
	}{
		{3, 2, "", "arp"},
		{3, 2, "static", "static"},
		{100, 1, "", "static"},
		{100, 1, "auto", "static"},
		{100, 1, "arp", "arp"},
	} {
		s := Spec{Name: "x", Hosts: tc.hosts, Pods: tc.pods, Backend: "host-gw", UnderlayNeighbours: tc.mode}
		if err := s.normalize(); err != nil {
			t.Fatal(err)
		}
		if s.UnderlayNeighbours != tc.want {
			t.Errorf("%d hosts, %d pods, %q: %s, want %s", tc.hosts, tc.pods, tc.mode, s.UnderlayNeighbours, tc.want)
		}
	}
}
