package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the hosts (underlay address, subnet, weftd pid), the
// pods (host, address) and, when m is not nil, the reachability matrix.
func (s *State) WriteTable(w io.Writer, m *Matrix) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "lab %s: backend %s, etcd %s (from the lab: %s)\n", s.Name, s.Spec.Backend, s.Etcd, s.EtcdUnderlay)
	if s.Spec.UnderlayNeighbours == "static" {
		fmt.Fprintf(tw, "underlay neighbours: static (ARP for %d hosts would crowd the kernel's shared neighbour table)\n", len(s.Hosts))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "HOST\tNETNS\tUNDERLAY\tSUBNET\tWEFTD PID\tPODS")
	for _, h := range s.Hosts {
		var pods []string
		for _, p := range s.Pods {
			if p.HostIndex == h.Index {
				pods = append(pods, p.Name)
			}
		}
		pid := "stopped"
		if h.PID != 0 {
			pid = fmt.Sprint(h.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.Netns, h.UnderlayIP, h.Subnet, pid, strings.Join(pods, " "))
	}
	if len(s.Pods) > 0 {
		fmt.Fprintln(tw, "\nPOD\tNETNS\tHOST\tADDRESS")
		for _, p := range s.Pods {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Netns, p.Host, p.IP)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if m == nil || len(m.Pods) == 0 {
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprint(tw, "\nreachability (row pings column; ok = echo reply)\n")
	fmt.Fprint(tw, "FROM\\TO")
	for _, p := range m.Pods {
		fmt.Fprintf(tw, "\t%s", p.Name)
	}
	fmt.Fprintln(tw)
	for i, p := range m.Pods {
		fmt.Fprint(tw, p.Name)
		for j := range m.Pods {
			switch {
			case i == j:
				fmt.Fprint(tw, "\t-")
			case m.OK[i][j]:
				fmt.Fprint(tw, "\tok")
			default:
				fmt.Fprint(tw, "\tFAIL")
			}
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	ok, total := 0, 0
	for i := range m.OK {
		for j := range m.OK[i] {
			if i != j {
				total++
				if m.OK[i][j] {
					ok++
				}
			}
		}
	}
	_, err := fmt.Fprintf(w, "%d/%d pod pairs reachable\n", ok, total)
	return err
}

// statusJSON is the document `weftctl lab status --json` prints.
type statusJSON struct {
	Name         string           `json:"name"`
	Etcd         string           `json:"etcd"`
	EtcdUnderlay string           `json:"etcd_underlay"`
	Backend      string           `json:"backend"`
	Hosts        []statusHostJSON `json:"hosts"`
	Pods         []statusPodJSON  `json:"pods"`
}

type statusHostJSON struct {
	Name       string `json:"name"`
	Netns      string `json:"netns"`
	UnderlayIP string `json:"underlay_ip"`
	Subnet     string `json:"subnet"`
	SubnetFile string `json:"subnet_file"`
	PID        int    `json:"pid"`
	Log        string `json:"log"`
}

type statusPodJSON struct {
	Name  string `json:"name"`
	Netns string `json:"netns"`
	Host  string `json:"host"`
	IP    string `json:"ip"`
}

// WriteJSON prints the lab's status as JSON: name, etcd (the client URL
// through the lab's unix socket), hosts and pods.
func (s *State) WriteJSON(w io.Writer) error {
	out := statusJSON{Name: s.Name, Etcd: s.Etcd, EtcdUnderlay: s.EtcdUnderlay, Backend: s.Spec.Backend, Hosts: []statusHostJSON{}, Pods: []statusPodJSON{}}
	for _, h := range s.Hosts {
		pid := h.PID
		if !alive(pid) {
			pid = 0
		}
		out.Hosts = append(out.Hosts, statusHostJSON{Name: h.Name, Netns: h.Netns, UnderlayIP: h.UnderlayIP, Subnet: h.Subnet, SubnetFile: h.SubnetFile, PID: pid, Log: h.Log})
	}
	for _, p := range s.Pods {
		out.Pods = append(out.Pods, statusPodJSON{Name: p.Name, Netns: p.Netns, Host: p.Host, IP: p.IP})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
