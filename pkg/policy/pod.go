// Package policy is sockbridge's pure-Go model of what to capture: the mesh
// presets, the per-pod policy the Kubernetes annotations produce, and the
// limits the datapath's maps impose. It imports no BPF code.
package policy

import (
	"net/netip"
)

// Limits of the datapath's per-pod lists. A policy over a limit is rejected
// with an error naming the list, never silently truncated.
const (
	MaxPorts = 64 // per pod and list (include/exclude, inbound/outbound)
	MaxCIDRs = 64 // per pod and list (include/exclude outbound IPv4 ranges)
)

// Pod is the capture policy of one pod, as the datapath applies it.
type Pod struct {
	// Name is namespace/name, for logs and events.
	Name string `json:"name"`
	// CgroupID is the id of the pod-level cgroup: the datapath's key.
	CgroupID uint64 `json:"cgroup_id"`
	// IPv4 is the pod's IPv4 address; the zero Addr when not yet known,
	// in which case captured connections keep the source the kernel picks.
	IPv4 netip.Addr `json:"ipv4"`
	// IPv6 is kept for the IPv6 datapath; not applied yet.
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	// Capture turns interception on. A pod with Capture false is known to
	// the datapath but none of its traffic is redirected.
	Capture  bool     `json:"capture"`
	Outbound Outbound `json:"outbound"`
	Inbound  Inbound  `json:"inbound"`
}

// Outbound says which of the app's connections go to the sidecar, with
// istio-iptables' precedence: ExcludePorts, then ExcludeCIDRs, then
// IncludePorts, then AllIPs or IncludeCIDRs.
type Outbound struct {
	// AllIPs captures every destination (includeOutboundIPRanges "*").
	AllIPs       bool           `json:"all_ips"`
	IncludeCIDRs []netip.Prefix `json:"include_cidrs,omitempty"`
	ExcludeCIDRs []netip.Prefix `json:"exclude_cidrs,omitempty"`
	// IncludePorts are captured whatever the destination IP (unless
	// excluded by ExcludePorts or ExcludeCIDRs).
	IncludePorts []uint16 `json:"include_ports,omitempty"`
	ExcludePorts []uint16 `json:"exclude_ports,omitempty"`
}

// Inbound says which of the pod's ports receive connections through the
// sidecar's inbound port: ExcludePorts first, then AllPorts or IncludePorts.
type Inbound struct {
	// AllPorts captures every port (includeInboundPorts "*").
	AllPorts     bool     `json:"all_ports"`
	IncludePorts []uint16 `json:"include_ports,omitempty"`
	// ExcludePorts also holds the ports never captured (Istio: 15008,
	// 15020, 15021, 15090 and the status port).
	ExcludePorts []uint16 `json:"exclude_ports,omitempty"`
}

// CaptureAll is the policy of a meshed pod without annotations: every
// outbound destination and every inbound port.
func CaptureAll() (Outbound, Inbound) {
	return Outbound{AllIPs: true}, Inbound{AllPorts: true}
}
