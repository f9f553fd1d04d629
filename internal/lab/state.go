package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// RunDir is the directory under which every lab keeps its files:
// /run/weft/lab/<name>/{lab.json, etcd/, etcd.sock, etcd.log, h<i>/}.
const RunDir = "/run/weft/lab"

// EtcdURL is the lab etcd's client URL on the underlay. Only processes
// inside the lab's namespaces may connect to it.
const EtcdURL = "http://198.18.0.1:2379"

// State is the content of lab.json: everything `lab status` reports and
// `lab down` needs.
type State struct {
	// Name is the lab's name.
	Name string `json:"name"`
	// Etcd is the client URL through the lab's unix socket, the only way a
	// process in the root namespace may reach the lab's etcd.
	Etcd string `json:"etcd"`
	// EtcdUnderlay is the etcd's client URL on the underlay, for processes
	// inside the lab.
	EtcdUnderlay string `json:"etcd_underlay"`
	// EtcdPID is the process id of the lab's etcd.
	EtcdPID int `json:"etcd_pid"`
	// Dir is the lab's directory.
	Dir string `json:"dir"`
	// Hosts and Pods describe the members.
	Hosts []HostState `json:"hosts"`
	Pods  []PodState  `json:"pods"`
	// Spec is the spec the lab was made from, defaults filled in.
	Spec Spec `json:"spec"`
}

// HostState describes one host.
type HostState struct {
	// Index is the host's number, from 1.
	Index int `json:"index"`
	// Name is "h<index>".
	Name string `json:"name"`
	// Netns is the host's named network namespace (for `ip netns exec`).
	Netns string `json:"netns"`
	// UnderlayIP is the address of the host's eth0.
	UnderlayIP string `json:"underlay_ip"`
	// Segment is the underlay segment (0 or 1).
	Segment int `json:"segment"`
	// Subnet is the host's leased subnet, e.g. 10.244.7.0/24.
	Subnet string `json:"subnet"`
	// SubnetFile is the subnet.env weftd writes for the host.
	SubnetFile string `json:"subnet_file"`
	// StateDir is weftd's --state-dir.
	StateDir string `json:"state_dir"`
	// HealthSocket is the unix socket weftd serves /healthz and /readyz on.
	HealthSocket string `json:"health_socket"`
	// Log is weftd's log file.
	Log string `json:"log"`
	// PID is weftd's process id (0 while stopped).
	PID int `json:"pid"`
}

// PodState describes one pod.
type PodState struct {
	// Name is "h<host>-p<index>".
	Name string `json:"name"`
	// Netns is the pod's named network namespace.
	Netns string `json:"netns"`
	// Host is the host's name ("h<i>").
	Host string `json:"host"`
	// HostIndex is the host's number, from 1.
	HostIndex int `json:"host_index"`
	// Index is the pod's number on its host, from 1.
	Index int `json:"index"`
	// IP is the pod's address (without prefix length).
	IP string `json:"ip"`
}

// Dir returns a lab's directory.
func Dir(name string) string { return filepath.Join(RunDir, name) }

// nsPrefix is the prefix shared by every namespace of the lab.
func nsPrefix(name string) string { return "weft-" + name + "-" }

func ulNS(name string) string            { return nsPrefix(name) + "ul" }
func rtNS(name string) string            { return nsPrefix(name) + "rt" }
func hostNS(name string, i int) string   { return nsPrefix(name) + hostName(i) }
func hostName(i int) string              { return "h" + strconv.Itoa(i) }
func podName(host, j int) string         { return hostName(host) + "-p" + strconv.Itoa(j) }
func podNS(name string, h, j int) string { return nsPrefix(name) + podName(h, j) }
func etcdSock(name string) string        { return filepath.Join(Dir(name), "etcd.sock") }

// EtcdSocketURL returns the client URL of a lab's etcd through its unix
// socket.
func EtcdSocketURL(name string) string { return "unix://" + etcdSock(name) }

func (s *State) path() string { return filepath.Join(s.Dir, "lab.json") }

// save writes lab.json atomically.
func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("lab: encode state: %w", err)
	}
	tmp := s.path() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("lab: save state: %w", err)
	}
	if err := os.Rename(tmp, s.path()); err != nil {
		return fmt.Errorf("lab: save state: %w", err)
	}
	return nil
}

// ErrNotFound is returned by [Load] for a lab that does not exist.
var ErrNotFound = errors.New("lab does not exist")

// loadState reads a lab's lab.json.
func loadState(name string) (*State, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("lab: name %q: want 1-16 lower-case letters and digits, starting with a letter", name)
	}
	p := filepath.Join(Dir(name), "lab.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab: %s: %w", p, err)
	}
	if s.Name != name {
		return nil, fmt.Errorf("lab: %s: names lab %q, not %q", p, s.Name, name)
	}
	return &s, nil
}
