package policy

// The built-in presets. Each call builds fresh values, so no caller can
// change another's preset. Sources for every value are in
// docs/annotations.md.
func builtinPresets() []Preset {
	return []Preset{istioPreset(), linkerdPreset(), kumaPreset()}
}

// istioPreset mirrors Istio's sidecar injection template and
// tools/istio-iptables (istio/istio): proxy uid/gid 1337 (-u/-g), outbound
// 15001 (-p), inbound 15006 (-z), tunnel port 15008 always returned
// (InboundTunnelPort), 15090 and 15021 always in -d, and the status port
// added to -d by the template's excludeInboundPort.
func istioPreset() Preset {
	return Preset{
		Name:                 "istio",
		ProxyUID:             1337,
		ProxyGID:             1337,
		OutboundPort:         15001,
		InboundPort:          15006,
		NeverCapturedInbound: []uint16{15008, 15020, 15021, 15090},
		TunnelPort:           15008,
		SidecarContainer:     "istio-proxy",
		InjectedAnnotation:   "sidecar.istio.io/status",
		// istio-cni reads the label first, then the annotation, with
		// strconv.ParseBool (cni/pkg/plugin/plugin.go).
		Inject: InjectSwitch{
			Key:      "sidecar.istio.io/inject",
			Enabled:  []string{"1", "t", "T", "TRUE", "true", "True"},
			Disabled: []string{"0", "f", "F", "FALSE", "false", "False"},
		},
		// istio-cni's exclusions (cni/pkg/plugin/plugin.go): pods already
		// captured by istio-init, DISABLE_ENVOY, and proxy types other
		// than "sidecar" (gateways run "proxy router").
		IptablesInitContainers:     []string{"istio-init"},
		DisableEnv:                 "DISABLE_ENVOY",
		Role:                       ProxyRole{Command: "proxy", Want: "sidecar"},
		InterceptionModeAnnotation: "sidecar.istio.io/interceptionMode",
		StatusPortAnnotation:       "status.sidecar.istio.io/port",
		DefaultStatusPort:          15020,
		Lists: []ListAnnotation{
			{Key: "traffic.sidecar.istio.io/includeOutboundIPRanges", Field: OutboundIncludeCIDRs, Syntax: ListSyntax{Wildcard: true}},
			{Key: "traffic.sidecar.istio.io/excludeOutboundIPRanges", Field: OutboundExcludeCIDRs},
			{Key: "traffic.sidecar.istio.io/includeOutboundPorts", Field: OutboundIncludePorts},
			{Key: "traffic.sidecar.istio.io/excludeOutboundPorts", Field: OutboundExcludePorts},
			{Key: "traffic.sidecar.istio.io/includeInboundPorts", Field: InboundIncludePorts, Syntax: ListSyntax{Wildcard: true}},
			{Key: "traffic.sidecar.istio.io/excludeInboundPorts", Field: InboundExcludePorts},
		},
		// Interface-based capture rules have no equivalent in a
		// cgroup/connect datapath yet.
		Unsupported: []string{
			"traffic.sidecar.istio.io/excludeInterfaces",
			"traffic.sidecar.istio.io/kubevirtInterfaces",
			"istio.io/reroute-virtual-interfaces",
		},
		// The agent's DNS proxy (pilot-agent DNS_PROXY_ADDR
		// localhost:15053), switched by ISTIO_META_DNS_CAPTURE.
		DNSPort: 15053,
		DNSSwitch: &DNSSwitch{
			ProxyConfigAnnotation: "proxy.istio.io/config",
			Key:                   "ISTIO_META_DNS_CAPTURE",
		},
	}
}

// linkerdPreset mirrors linkerd2's proxy-init partial
// (charts/partials/templates/_proxy-init.tpl): proxy uid 2102, inbound
// 4143, outbound 4140, and the proxy's control (4190) and admin (4191)
// ports always in --inbound-ports-to-ignore. Its proxy partial
// (charts/partials/templates/_proxy.tpl) sets
// LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS to 127.0.0.1:4140 and, unless
// disableIPv6, [::1]:4140: a loopback-only outbound listener.
func linkerdPreset() Preset {
	return Preset{
		Name:                 "linkerd",
		ProxyUID:             2102,
		ProxyGID:             2102,
		OutboundPort:         4140,
		InboundPort:          4143,
		NeverCapturedInbound: []uint16{4190, 4191},
		// 127.0.0.1:4140 and [::1]:4140, no wildcard.
		OutboundListenerLoopbackOnly: true,
		SidecarContainer:             "linkerd-proxy",
		InjectedAnnotation:           "linkerd.io/proxy-version",
		Inject: InjectSwitch{
			Key:      "linkerd.io/inject",
			Enabled:  []string{"enabled", "ingress"},
			Disabled: []string{"disabled"},
		},
		IptablesInitContainers: []string{"linkerd-init"},
		Lists: []ListAnnotation{
			{Key: "config.linkerd.io/skip-outbound-ports", Field: OutboundExcludePorts, Syntax: ListSyntax{Ranges: true}},
			{Key: "config.linkerd.io/skip-inbound-ports", Field: InboundExcludePorts, Syntax: ListSyntax{Ranges: true}},
			{Key: "config.linkerd.io/skip-subnets", Field: OutboundExcludeCIDRs},
		},
		// These change the proxy's identity or ports per pod; the datapath
		// has them as load-time constants, so a pod that moves them cannot
		// be captured without looping or capturing the proxy's own ports.
		Pinned: []PinnedValue{
			{Key: "config.linkerd.io/proxy-uid", Want: 2102},
			{Key: "config.linkerd.io/inbound-port", Want: 4143},
			{Key: "config.linkerd.io/outbound-port", Want: 4140},
			{Key: "config.linkerd.io/control-port", Want: 4190},
			{Key: "config.linkerd.io/admin-port", Want: 4191},
		},
	}
}

// kumaPreset mirrors Kuma's transparent proxy defaults and its pod
// annotations (kumahq/kuma pkg/plugins/runtime/k8s/metadata/annotations.go):
// kuma-dp runs as uid 5678, outbound 15001, inbound 15006.
func kumaPreset() Preset {
	return Preset{
		Name:               "kuma",
		ProxyUID:           5678,
		ProxyGID:           5678,
		OutboundPort:       15001,
		InboundPort:        15006,
		SidecarContainer:   "kuma-sidecar",
		InjectedAnnotation: "kuma.io/sidecar-injected",
		Inject: InjectSwitch{
			Key:      "kuma.io/sidecar-injection",
			Enabled:  []string{"enabled", "true", "yes"},
			Disabled: []string{"disabled", "false", "no"},
		},
		IptablesInitContainers: []string{"kuma-init"},
		Lists: []ListAnnotation{
			{Key: "traffic.kuma.io/exclude-outbound-ports", Field: OutboundExcludePorts},
			{Key: "traffic.kuma.io/exclude-inbound-ports", Field: InboundExcludePorts},
			{Key: "traffic.kuma.io/exclude-outbound-ips", Field: OutboundExcludeCIDRs, Syntax: ListSyntax{BareIPs: true}},
		},
		// Source-address and per-uid exclusions are not in the model yet.
		Unsupported: []string{
			"traffic.kuma.io/exclude-inbound-ips",
			"traffic.kuma.io/exclude-outbound-ports-for-uids",
		},
		Pinned: []PinnedValue{
			{Key: "kuma.io/sidecar-uid", Want: 5678},
		},
	}
}
