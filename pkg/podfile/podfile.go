// Package podfile reads the static list of meshed pods the agent takes
// when it runs without a Kubernetes API server (demo, tests, bare hosts).
//
// The file is JSON:
//
//	{"pods": [
//	  {"name": "default/app", "cgroup": "kubepods/burstable/pod<uid>", "ip": "10.250.0.2"},
//	  {"name": "default/dual", "cgroup": "kubepods/pod<uid>", "ips": ["10.250.0.4", "fd00:250::4"]},
//	  {"name": "default/off", "cgroup": "/sys/fs/cgroup/x", "ip": "10.250.0.3", "capture": false},
//	  {"name": "default/dns", "cgroup": "kubepods/pod<uid>", "ip": "10.250.0.5",
//	   "dns_capture": true, "nameservers": ["10.96.0.10", "fd00::a"]}
//	]}
//
// "cgroup" is the pod-level cgroup, absolute or relative to the cgroup v2
// root; "ip" (one address) or "ips" (at most one per family, like
// status.podIPs) are optional: without an address of a family, captured
// connections of that family keep the source address the kernel picks;
// "capture" defaults to true. A listed pod gets the policy of a meshed pod
// without annotations: every outbound destination, every inbound port.
// "dns_capture" (default: the agent's --dns-capture) sends the pod's DNS
// to the sidecar's DNS proxy: queries to port 53 of its "nameservers" (at
// most 3, both families), or of any address with the agent's
// --dns-capture-all.
package podfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Entry is one pod in the file.
type Entry struct {
	Name    string   `json:"name"`
	Cgroup  string   `json:"cgroup"`
	IP      string   `json:"ip,omitempty"`
	IPs     []string `json:"ips,omitempty"`
	Capture *bool    `json:"capture,omitempty"`
	// DNSCapture and Nameservers: the pod's DNS capture.
	DNSCapture  *bool    `json:"dns_capture,omitempty"`
	Nameservers []string `json:"nameservers,omitempty"`
}

// Defaults are the agent's settings for what an entry does not say.
type Defaults struct {
	// DNSCapture is the DNS capture of entries without "dns_capture".
	DNSCapture bool
	// DNSAll captures every port-53 destination of the pods that capture
	// DNS, instead of their nameservers.
	DNSAll bool
}

// File is the whole file.
type File struct {
	Pods []Entry `json:"pods"`
}

// Parse decodes a pod file, rejecting unknown fields.
func Parse(data []byte) (*File, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode pod file: %w (want {\"pods\": [{\"name\", \"cgroup\", \"ip\" or \"ips\", \"capture\", \"dns_capture\", \"nameservers\"}]})", err)
	}
	return &f, nil
}

// Read reads and parses the file at path.
func Read(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pod file: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Resolve turns entries into datapath pods, looking up each cgroup's id
// below cgroupRoot. A bad entry is reported in the error and left out; the
// good ones are returned all the same.
func (f *File) Resolve(cgroupRoot string) ([]policy.Pod, error) {
	return f.ResolveWith(cgroupRoot, Defaults{})
}

// ResolveWith is Resolve with the agent's defaults for what entries do not
// say.
func (f *File) ResolveWith(cgroupRoot string, d Defaults) ([]policy.Pod, error) {
	var (
		pods []policy.Pod
		errs []error
	)
	for i, e := range f.Pods {
		p, err := e.resolve(cgroupRoot, d)
		if err != nil {
			name := e.Name
			if name == "" {
				name = fmt.Sprintf("#%d", i)
			}
			errs = append(errs, fmt.Errorf("pod %s: %w", name, err))
			continue
		}
		pods = append(pods, p)
	}
	return pods, errors.Join(errs...)
}

func (e Entry) resolve(root string, d Defaults) (policy.Pod, error) {
	if e.Cgroup == "" {
		return policy.Pod{}, errors.New(`"cgroup" is empty (want the pod cgroup's path)`)
	}
	path := cgroups.Resolve(root, e.Cgroup)
	id, err := cgroups.ID(path)
	if err != nil {
		return policy.Pod{}, err
	}
	p := policy.Pod{Name: e.Name, CgroupID: id, CgroupPath: path, Capture: e.Capture == nil || *e.Capture}
	p.Outbound, p.Inbound = policy.CaptureAll()
	p, err = e.addresses(p)
	if err != nil {
		return policy.Pod{}, err
	}
	return e.dns(p, d)
}

// dns sets p's DNS capture from "dns_capture" and "nameservers".
func (e Entry) dns(p policy.Pod, d Defaults) (policy.Pod, error) {
	var servers []netip.Addr
	for _, s := range e.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return policy.Pod{}, fmt.Errorf("nameserver %q is not an IP address", s)
		}
		servers = append(servers, a.Unmap())
	}
	if len(servers) > policy.MaxNameservers {
		return policy.Pod{}, fmt.Errorf("nameservers %q: at most %d (the kubelet writes no more)", e.Nameservers, policy.MaxNameservers)
	}
	capture := d.DNSCapture
	if e.DNSCapture != nil {
		capture = *e.DNSCapture
	}
	switch {
	case !capture || !p.Capture:
	case d.DNSAll:
		p.DNS = policy.DNS{Capture: true, All: true}
	case len(servers) == 0 && e.DNSCapture != nil:
		return policy.Pod{}, errors.New(`"dns_capture" without "nameservers" (or the agent's --dns-capture-all): nothing to capture`)
	case len(servers) == 0:
		// The agent's default and no nameservers: as istio-iptables
		// with --redirect-dns and no DNS servers, no DNS capture.
	default:
		p.DNS = policy.DNS{Capture: true, Nameservers: servers}
	}
	return p, nil
}

// addresses sets p's IPv4 and IPv6 from "ip" and "ips".
func (e Entry) addresses(p policy.Pod) (policy.Pod, error) {
	ips := e.IPs
	if e.IP != "" {
		ips = append([]string{e.IP}, ips...)
	}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return policy.Pod{}, fmt.Errorf("ip %q is not an IP address", s)
		}
		ip = ip.Unmap()
		slot, family := &p.IPv4, "IPv4"
		if ip.Is6() {
			slot, family = &p.IPv6, "IPv6"
		}
		if slot.IsValid() {
			return policy.Pod{}, fmt.Errorf("ips %q: two %s addresses (at most one per family)", ips, family)
		}
		*slot = ip
	}
	return p, nil
}
