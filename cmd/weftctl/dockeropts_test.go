package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/subnetenv"
)

func runDockerOpts(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newDockerOptsCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestDockerOpts(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "subnet.env")
	env := subnetenv.New(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.7.0/24"), 1450, true)
	if err := subnetenv.Write(file, env); err != nil {
		t.Fatal(err)
	}
	got, err := runDockerOpts(t, "--subnet-file", file)
	if err != nil {
		t.Fatal(err)
	}
	want := `DOCKER_OPT_BIP="--bip=10.244.7.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=false"
DOCKER_OPT_MTU="--mtu=1450"
DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1450"
`
	if got != want {
		t.Errorf("env format:\n%s\nwant:\n%s", got, want)
	}

	// weftd does not masquerade: Docker must.
	env.IPMasq = false
	if err := subnetenv.Write(file, env); err != nil {
		t.Fatal(err)
	}
	got, err = runDockerOpts(t, "--subnet-file", file, "--format", "args")
	if err != nil || got != "--bip=10.244.7.1/24 --ip-masq=true --mtu=1450\n" {
		t.Errorf("args format: %q, %v", got, err)
	}

	out := filepath.Join(dir, "docker.env")
	if _, err := runDockerOpts(t, "--subnet-file", file, "--key", "WEFT_DOCKER", "-o", out); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), `WEFT_DOCKER=" --bip=10.244.7.1/24 --ip-masq=true --mtu=1450"`) {
		t.Errorf("output file: %q", b)
	}
}

func TestDockerOptsErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := runDockerOpts(t, "--subnet-file", filepath.Join(dir, "missing.env"))
	if err == nil || !strings.Contains(err.Error(), "weftd") {
		t.Errorf("missing subnet.env: %v, want an error saying weftd is not ready", err)
	}
	bad := filepath.Join(dir, "bad.env")
	os.WriteFile(bad, []byte("FLANNEL_MTU=1450\n"), 0o644)
	if _, err := runDockerOpts(t, "--subnet-file", bad); err == nil || !strings.Contains(err.Error(), "FLANNEL_SUBNET") {
		t.Errorf("subnet.env without FLANNEL_SUBNET: %v", err)
	}
	good := filepath.Join(dir, "good.env")
	subnetenv.Write(good, subnetenv.New(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.7.0/24"), 1450, true))
	if _, err := runDockerOpts(t, "--subnet-file", good, "--format", "yaml"); err == nil || !strings.Contains(err.Error(), "--format") {
		t.Errorf("bad --format: %v", err)
	}
}
