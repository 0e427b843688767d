// Package podfile reads the static list of meshed pods the agent takes
// when it runs without a Kubernetes API server (demo, tests, bare hosts).
//
// The file is JSON:
//
//	{"pods": [
//	  {"name": "default/app", "cgroup": "kubepods/burstable/pod<uid>", "ip": "10.250.0.2"},
//	  {"name": "default/off", "cgroup": "/sys/fs/cgroup/x", "ip": "10.250.0.3", "capture": false}
//	]}
//
// "cgroup" is the pod-level cgroup, absolute or relative to the cgroup v2
// root; "ip" is optional (without it captured connections keep the source
// address the kernel picks); "capture" defaults to true. A listed pod gets
// the policy of a meshed pod without annotations: every outbound
// destination, every inbound port.
package podfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Entry is one pod in the file.
type Entry struct {
	Name    string `json:"name"`
	Cgroup  string `json:"cgroup"`
	IP      string `json:"ip,omitempty"`
	Capture *bool  `json:"capture,omitempty"`
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
		return nil, fmt.Errorf("decode pod file: %w (want {\"pods\": [{\"name\", \"cgroup\", \"ip\", \"capture\"}]})", err)
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
func (f *File) Resolve(cgroupRoot string) ([]datapath.Pod, error) {
	var (
		pods []datapath.Pod
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

func (e Entry) resolve(root string) (datapath.Pod, error) {
	if e.Cgroup == "" {
		return datapath.Pod{}, errors.New(`"cgroup" is empty (want the pod cgroup's path)`)
	}
	id, err := cgroups.ID(cgroups.Resolve(root, e.Cgroup))
	if err != nil {
		return datapath.Pod{}, err
	}
	p := datapath.Pod{Name: e.Name, CgroupID: id, Capture: e.Capture == nil || *e.Capture}
	p.Outbound, p.Inbound = policy.CaptureAll()
	if e.IP != "" {
		ip, err := netip.ParseAddr(e.IP)
		if err != nil || !ip.Is4() {
			return datapath.Pod{}, fmt.Errorf("ip %q is not an IPv4 address", e.IP)
		}
		p.IPv4 = ip
	}
	return p, nil
}
