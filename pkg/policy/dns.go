package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// DNSSwitch says where a pod asks for DNS capture, as Istio reads it
// (docs/annotations.md, "DNS capture"):
//
//  1. the sidecar container's environment variable Key: Istio's injector
//     renders the merged proxyMetadata (mesh default and the pod's
//     annotation) there, istio-cni reads nothing else, and pilot-agent reads
//     it to decide whether its DNS proxy listens at all;
//  2. else Key in the proxyMetadata of the ProxyConfigAnnotation (a pod
//     whose sidecar was not injected with it);
//  3. else the mesh-wide default, Preset.MeshDNSCapture.
//
// Values are read with strconv.ParseBool, as Istio reads them. A value it
// rejects turns DNS capture off, as it does for the sidecar, and is
// reported as a DNS problem; the rest of the pod's policy applies. A
// ProxyConfigAnnotation that is not YAML, or whose proxyMetadata is not a
// map of strings, is a Problem like any bad annotation (Istio's injector
// refuses such a pod).
type DNSSwitch struct {
	ProxyConfigAnnotation string
	Key                   string
}

// dnsCapture reads the pod's DNS switch. configProblem is a malformed
// ProxyConfigAnnotation, which keeps the pod from being captured.
func (p *Preset) dnsCapture(pod *corev1.Pod) (on bool, source string, problems []Problem, configProblem *Problem) {
	sw := p.DNSSwitch
	if sw == nil {
		return false, "", nil, nil
	}
	annoValue, annoSet, err := proxyMetadata(pod.Annotations, sw.ProxyConfigAnnotation, sw.Key)
	if err != nil {
		configProblem = &Problem{
			Annotation: sw.ProxyConfigAnnotation, Value: pod.Annotations[sw.ProxyConfigAnnotation],
			Valid: "a ProxyConfig in YAML or JSON whose proxyMetadata maps names to strings", Err: err,
		}
	}
	parse := func(value, where string) (bool, string, []Problem) {
		b, err := strconv.ParseBool(value)
		if err != nil {
			return false, where, []Problem{{
				Annotation: where, Value: value, Valid: "true or false (strconv.ParseBool)",
				Err: fmt.Errorf("%s is not a boolean: DNS is not captured, as the sidecar reads it as false", sw.Key),
			}}
		}
		return b, where, nil
	}
	if c := p.sidecarContainer(pod); c != nil {
		for _, e := range c.Env {
			if e.Name == sw.Key && e.ValueFrom == nil {
				on, source, problems = parse(e.Value, fmt.Sprintf("%s env of container %s", sw.Key, c.Name))
				return on, source, problems, configProblem
			}
		}
	}
	if annoSet {
		on, source, problems = parse(annoValue, fmt.Sprintf("%s proxyMetadata.%s", sw.ProxyConfigAnnotation, sw.Key))
		return on, source, problems, configProblem
	}
	if p.MeshDNSCapture {
		return true, "the mesh-wide default (--dns-capture)", nil, configProblem
	}
	return false, "", nil, configProblem
}

// proxyMetadata returns proxyMetadata[key] of the ProxyConfig in
// annotation name. A YAML boolean counts as its string ("true"): Istio's
// documentation always quotes it, and the meaning is the same.
func proxyMetadata(annotations map[string]string, name, key string) (value string, ok bool, err error) {
	raw, present := annotations[name]
	if !present || strings.TrimSpace(raw) == "" {
		return "", false, nil
	}
	var cfg struct {
		ProxyMetadata map[string]any `json:"proxyMetadata"`
	}
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		return "", false, fmt.Errorf("not a ProxyConfig: %w", err)
	}
	var found bool
	for k, v := range cfg.ProxyMetadata {
		var s string
		switch v := v.(type) {
		case string:
			s = v
		case bool:
			s = strconv.FormatBool(v)
		default:
			return "", false, fmt.Errorf("proxyMetadata.%s is %v, not a string", k, v)
		}
		if k == key {
			value, found = s, true
		}
	}
	return value, found, nil
}

// NodeDNS is what the kubelet of this node puts into its pods'
// resolv.conf, as far as the nameservers go: the agent learns it from its
// flags (--cluster-dns, --node-resolv-conf), never from a container's
// filesystem.
type NodeDNS struct {
	// ClusterDNS is the kubelet's clusterDNS: the nameservers of
	// dnsPolicy ClusterFirst pods. Empty: unknown to the agent.
	ClusterDNS []netip.Addr
	// HostNameservers are those of the kubelet's resolvConf (the node's
	// resolv.conf): dnsPolicy Default pods get them.
	HostNameservers []netip.Addr
}

// Nameservers returns the nameservers the kubelet writes into the pod's
// resolv.conf, in its order (pkg/kubelet/network/dns GetPodDNS): by
// dnsPolicy, ClusterFirst (the default, and ClusterFirstWithHostNet) the
// cluster DNS, Default the node's, None none; then spec.dnsConfig's
// nameservers appended, duplicates dropped, at most MaxNameservers. A
// ClusterFirst pod on a node whose cluster DNS the agent does not know gets
// none (guessing the kubelet's fallback to the node's resolv.conf would be
// wrong wherever the kubelet does know it); why says so.
func Nameservers(pod *corev1.Pod, node NodeDNS) (servers []netip.Addr, why string) {
	switch pod.Spec.DNSPolicy {
	case corev1.DNSNone:
	case corev1.DNSDefault:
		servers = slices.Clone(node.HostNameservers)
		why = "dnsPolicy Default and the node's resolv.conf has no nameserver"
	default: // ClusterFirst, ClusterFirstWithHostNet, or unset (ClusterFirst)
		servers = slices.Clone(node.ClusterDNS)
		why = "dnsPolicy ClusterFirst and the agent does not know the cluster DNS (--cluster-dns)"
	}
	if pod.Spec.DNSConfig != nil {
		for _, s := range pod.Spec.DNSConfig.Nameservers {
			if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil && a.Zone() == "" {
				servers = append(servers, a.Unmap())
			}
		}
	}
	if pod.Spec.DNSPolicy == corev1.DNSNone {
		why = "dnsPolicy None without spec.dnsConfig.nameservers"
	}
	var out []netip.Addr
	for _, a := range servers {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) > MaxNameservers {
		out = out[:MaxNameservers]
	}
	if len(out) > 0 {
		why = ""
	}
	return out, why
}

// ParseResolvConf returns the nameserver addresses of a resolv.conf, as
// the kubelet reads its resolvConf: "nameserver" lines, comments (# ;)
// ignored, entries that are not addresses skipped.
func ParseResolvConf(data []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
			out = append(out, a.Unmap())
		}
	}
	return out
}
