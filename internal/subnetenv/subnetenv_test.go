package subnetenv

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	if _, err := Read(path); !errors.Is(err, ErrNotReady) {
		t.Fatalf("missing file: got %v, want ErrNotReady", err)
	}
	e := New(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.7.0/24"), 1450, true)
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	got, err := Read(path)
	if err != nil || got != e {
		t.Fatalf("Read = %+v, %v; want %+v", got, err, e)
	}
	if got.Gateway().String() != "10.244.7.1" || got.HostSubnet().String() != "10.244.7.0/24" {
		t.Fatalf("gateway %v subnet %v", got.Gateway(), got.HostSubnet())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"", "FLANNEL_MTU=1450\n", "FLANNEL_SUBNET=banana\n", "FLANNEL_SUBNET=10.0.0.1/24\nFLANNEL_MTU=9\n", "garbage\n"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	// flannel's IPv6 variables are ignored, not refused.
	if _, err := Parse([]byte("FLANNEL_SUBNET=10.0.0.1/24\nFLANNEL_IPV6_SUBNET=fd00::1/64\n")); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			return
		}
		if !e.Subnet.IsValid() {
			t.Fatal("accepted without a subnet")
		}
	})
}
