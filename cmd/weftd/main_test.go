package main

import (
	"strings"
	"testing"
	"time"
)

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("WEFTD_IFACE", "eth7")
	t.Setenv("WEFTD_SUBNET_FILE", "/tmp/x.env")
	t.Setenv("WEFTD_IP_MASQ", "true")
	t.Setenv("WEFTD_RESYNC_PERIOD", "3s")
	t.Setenv("WEFTD_ETCD_ENDPOINTS", "http://198.18.0.1:2379,http://198.18.0.2:2379")
	f, err := parseFlags([]string{"--subnet-file", "/run/cli.env"})
	if err != nil {
		t.Fatal(err)
	}
	if f.agent.Iface != "eth7" || !f.agent.IPMasq || f.agent.ResyncPeriod != 3*time.Second {
		t.Errorf("environment not applied: %+v", f.agent)
	}
	if f.agent.SubnetFile != "/run/cli.env" {
		t.Errorf("command line should win over the environment, got %q", f.agent.SubnetFile)
	}
	if len(f.etcd.Endpoints) != 2 {
		t.Errorf("endpoints %v", f.etcd.Endpoints)
	}
}

func TestFlagDefaultsAndErrors(t *testing.T) {
	f, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.agent.SubnetFile != "/run/flannel/subnet.env" || f.agent.LeaseTTL != 24*time.Hour || f.agent.ResyncPeriod != 10*time.Second || f.etcd.Prefix != "/coreos.com/network" {
		t.Errorf("defaults: %+v %+v", f.agent, f.etcd)
	}
	t.Setenv("WEFTD_RESYNC_PERIOD", "soon")
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "WEFTD_RESYNC_PERIOD") {
		t.Errorf("bad environment value: %v", err)
	}
}
