package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/etcdserver/etcdtest"
)

func weftctl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestConfigSetGet(t *testing.T) {
	ep := etcdtest.Start(t)
	flags := []string{"--etcd-endpoints", ep}

	// Invalid: an error naming the field, nothing written.
	_, err := weftctl(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7"}`, append(flags, "config", "set", "-")...)
	if err == nil || !strings.Contains(err.Error(), "SubnetMin") {
		t.Fatalf("invalid config: got %v", err)
	}
	_, err = weftctl(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"carrier-pigeon"}}`, append(flags, "config", "set", "-")...)
	if err == nil || !strings.Contains(err.Error(), "Backend.Type") {
		t.Fatalf("unknown backend: got %v", err)
	}
	_, err = weftctl(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","Bogus":1}}`, append(flags, "config", "set", "-")...)
	if err == nil || !strings.Contains(err.Error(), "Backend.Bogus") {
		t.Fatalf("unknown backend option: got %v", err)
	}
	if _, err := weftctl(t, "", append(flags, "config", "get")...); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("config written despite errors: %v", err)
	}

	// Valid: written and read back.
	doc := `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`
	if _, err := weftctl(t, doc, append(flags, "config", "set", "-")...); err != nil {
		t.Fatal(err)
	}
	out, err := weftctl(t, "", append(flags, "config", "get")...)
	if err != nil || strings.TrimSpace(out) != doc {
		t.Fatalf("config get = %q, %v", out, err)
	}
}

func TestLeasesReserveListDelete(t *testing.T) {
	ep := etcdtest.Start(t)
	flags := []string{"--etcd-endpoints", ep}
	if _, err := weftctl(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`, append(flags, "config", "set", "-")...); err != nil {
		t.Fatal(err)
	}
	if _, err := weftctl(t, "", append(flags, "leases", "reserve", "10.244.9.0/24", "--public-ip", "198.18.0.99")...); err != nil {
		t.Fatal(err)
	}
	if _, err := weftctl(t, "", append(flags, "leases", "reserve", "10.244.9.5/24", "--public-ip", "198.18.0.99")...); err == nil {
		t.Fatal("misaligned reservation accepted")
	}
	out, err := weftctl(t, "", append(flags, "leases", "list")...)
	if err != nil || !strings.Contains(out, "10.244.9.0/24") || !strings.Contains(out, "reservation") {
		t.Fatalf("list = %q, %v", out, err)
	}
	if _, err := weftctl(t, "", append(flags, "leases", "delete", "10.244.9.0/24")...); err != nil {
		t.Fatal(err)
	}
	out, _ = weftctl(t, "", append(flags, "leases", "list")...)
	if strings.Contains(out, "10.244.9.0/24") {
		t.Fatalf("deleted lease still listed: %q", out)
	}
}

func TestStatus(t *testing.T) {
	ep := etcdtest.Start(t)
	flags := []string{"--etcd-endpoints", ep}
	envFile := t.TempDir() + "/subnet.env"
	_, err := weftctl(t, "", append(flags, "status", "--subnet-file", envFile)...)
	if err == nil || !strings.Contains(err.Error(), "weftd has not leased") {
		t.Fatalf("no subnet.env: %v", err)
	}
	if err := os.WriteFile(envFile, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := weftctl(t, "", append(flags, "status", "--subnet-file", envFile)...); err == nil || !strings.Contains(err.Error(), "no lease in etcd") {
		t.Fatalf("lease missing: %v", err)
	}
	if _, err := weftctl(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`, append(flags, "config", "set", "-")...); err != nil {
		t.Fatal(err)
	}
	if _, err := weftctl(t, "", append(flags, "leases", "reserve", "10.244.9.0/24", "--public-ip", "198.18.0.99")...); err != nil {
		t.Fatal(err)
	}
	out, err := weftctl(t, "", append(flags, "status", "--subnet-file", envFile)...)
	if err != nil || !strings.Contains(out, "reservation 10.244.9.0/24 of 198.18.0.99") {
		t.Fatalf("status = %q, %v", out, err)
	}
}
