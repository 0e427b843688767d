// Package podfile reads the static list of meshed pods the agent takes
// when it runs without a Kubernetes API server (demo, tests, bare hosts).
//
// The file is JSON:
//
//	{"pods": [
//	  {"name": "default/app", "cgroup": "kubepods/burstable/pod<uid>", "ip": "10.250.0.2"},
//	  {"name": "default/dual", "cgroup": "kubepods/pod<uid>", "ips": ["10.250.0.4", "fd00:250::4"]},
//	  {"name": "default/off", "cgroup": "/sys/fs/cgroup/x", "ip": "10.250.0.3", "capture": false}
//	]}
//
// "cgroup" is the pod-level cgroup, absolute or relative to the cgroup v2
// root; "ip" (one address) or "ips" (at most one per family, like
// status.podIPs) are optional: without an address of a family, captured
// connections of that family keep the source address the kernel picks;
// "capture" defaults to true. A listed pod gets the policy of a meshed pod
// without annotations: every outbound destination, every inbound port.
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
		return nil, fmt.Errorf("decode pod file: %w (want {\"pods\": [{\"name\", \"cgroup\", \"ip\" or \"ips\", \"capture\"}]})", err)
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
	var (
		pods []policy.Pod
		errs []error
	)
	for i, e := range f.Pods {
		p, err := e.resolve(cgroupRoot)
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

func (e Entry) resolve(root string) (policy.Pod, error) {
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
	return e.addresses(p)
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
