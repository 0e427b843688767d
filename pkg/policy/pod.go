package policy

import (
	"net/netip"
)

// Limits of the datapath's per-pod lists. A policy over a limit is rejected
// with an error naming the list, never silently truncated.
const (
	MaxPorts = 64 // per pod and list (include/exclude, inbound/outbound)
	MaxCIDRs = 64 // per pod and list (include/exclude outbound IPv4 ranges)
	// MaxNameservers is the most nameservers a pod has: the kubelet
	// writes at most 3 into a pod's resolv.conf (MaxDNSNameservers).
	MaxNameservers = 3
)

// Pod is the capture policy of one pod, as the datapath applies it.
type Pod struct {
	// Name is namespace/name, for logs and events.
	Name string `json:"name,omitempty"`
	// CgroupID is the id of the pod-level cgroup: the datapath's key.
	CgroupID uint64 `json:"cgroup_id"`
	// CgroupPath is the pod-level cgroup's directory, where the pod's
	// processes (and so its network namespace) are found for inbound
	// capture; "" when unknown (a pod read back from the maps).
	CgroupPath string `json:"-"`
	// IPv4 is the pod's IPv4 address; the zero Addr when not yet known,
	// in which case captured connections keep the source the kernel picks.
	IPv4 netip.Addr `json:"ipv4"`
	// IPv6 is the pod's IPv6 address; the zero Addr when it has none. The
	// datapath binds it as the source of captured IPv6 connections and
	// finds the pod by it for the same-node shortcut.
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	// Capture turns interception on. A pod with Capture false is known to
	// the datapath but none of its traffic is redirected.
	Capture  bool     `json:"capture"`
	Outbound Outbound `json:"outbound"`
	Inbound  Inbound  `json:"inbound"`
	// DNS says which of the pod's DNS queries go to the sidecar's DNS
	// proxy; it applies only when Capture is on.
	DNS DNS `json:"dns,omitzero"`
}

// DNS is a pod's DNS capture, as istio-iptables' --redirect-dns and
// --capture-all-dns rules apply it: UDP and TCP to port 53 of one of
// Nameservers (or of any address with All) go to the DNS proxy, except the
// proxy's own queries and unless outbound port 53 is excluded. Address
// ranges do not apply to DNS.
type DNS struct {
	Capture bool `json:"capture"`
	// All captures every port-53 destination (--capture-all-dns).
	All bool `json:"all,omitempty"`
	// Nameservers are the pod's resolv.conf nameservers, both families,
	// at most MaxNameservers.
	Nameservers []netip.Addr `json:"nameservers,omitempty"`
}

// Outbound says which of the app's connections go to the sidecar, with
// istio-iptables' precedence (the order of its ISTIO_OUTPUT rules in
// tools/istio-iptables/pkg/capture/run.go): a connection is not captured
// if its port is in ExcludePorts, else not if its destination is in
// ExcludeCIDRs, else captured if its port is in IncludePorts, else
// captured if AllIPs or its destination is in IncludeCIDRs, else not.
// Lists are sorted and free of duplicates; ports are 1-65535 and
// prefixes masked.
type Outbound struct {
	// AllIPs captures every destination (includeOutboundIPRanges "*").
	AllIPs       bool           `json:"all_ips"`
	IncludeCIDRs []netip.Prefix `json:"include_cidrs,omitempty"`
	ExcludeCIDRs []netip.Prefix `json:"exclude_cidrs,omitempty"`
	// IncludePorts are captured whatever the destination IP (unless
	// excluded by ExcludePorts or ExcludeCIDRs).
	IncludePorts []uint16 `json:"include_ports,omitempty"`
	ExcludePorts []uint16 `json:"exclude_ports,omitempty"`
	// IncludeCIDRsV6 and ExcludeCIDRsV6 hold the IPv6 entries of the same
	// annotations, split off as istio-iptables splits them for ip6tables
	// (separateV4V6), and apply to IPv6 destinations only.
	IncludeCIDRsV6 []netip.Prefix `json:"include_cidrs_v6,omitempty"`
	ExcludeCIDRsV6 []netip.Prefix `json:"exclude_cidrs_v6,omitempty"`
}

// Inbound says which of the pod's ports receive connections through the
// sidecar's inbound port: a connection is not captured if its port is in
// ExcludePorts, else captured if AllPorts or its port is in IncludePorts.
// As in istio-iptables (handleInboundPortsInclude), the user's excluded
// ports are only placed in ExcludePorts when AllPorts is set; with an
// explicit IncludePorts list only the never-captured ports are.
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
