package probe

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/sockbridge/sockbridge/pkg/datapath"
)

// The kernel releases below are the upstream ones that introduced each
// feature (for a helper: the release that let that program type call it),
// from the kernel's git history; bpf/*.c state the same floors. They are
// reported for operators; the decision comes from trying the feature.

type progType struct {
	name      string
	typ       ebpf.ProgramType
	minKernel string
	need      Need
}

// progTypes are the program types the datapath loads.
func progTypes() []progType {
	return []progType{
		{"cgroup_sock_addr", ebpf.CGroupSockAddr, "4.17", NeedCapture}, // connect4, getpeername4
		{"sock_ops", ebpf.SockOps, "4.13", NeedCapture},
		{"cgroup_sockopt", ebpf.CGroupSockopt, "5.3", NeedCapture}, // getsockopt
		{"sk_msg", ebpf.SkMsg, "4.17", NeedSplice},
		{"sk_lookup", ebpf.SkLookup, "5.9", NeedInbound},
	}
}

type mapType struct {
	name      string
	typ       ebpf.MapType
	minKernel string
	need      Need
	detail    string
}

// mapTypes are the map types the datapath creates.
func mapTypes() []mapType {
	return []mapType{
		{"hash", ebpf.Hash, "3.19", NeedCapture, "pods, pod IPs, in-flight handshakes"},
		{"percpu_array", ebpf.PerCPUArray, "4.6", NeedCapture, "counters"},
		{"array", ebpf.Array, "3.19", NeedCapture, "pod map generation"},
		{"lru_hash", ebpf.LRUHash, "4.10", NeedCapture, "cgroup to pod cache"},
		{"sk_storage", ebpf.SkStorage, "5.2", NeedCapture, "per-socket original destination"},
		{"sockhash", ebpf.SockHash, "4.18", NeedSplice, "sockets to splice; the sidecars' inbound listeners (inbound capture needs it too)"},
		{"lpm_trie", ebpf.LPMTrie, "4.11", NeedCapture, "per-pod outbound IP ranges"},
	}
}

type helper struct {
	name      string
	fn        asm.BuiltinFunc
	prog      progType
	minKernel string
	need      Need
	// also are the other optional features whose programs call the
	// helper: without it they are off too.
	also []Need
}

// helperReleases is the upstream release that let each program type call
// each helper, for the docs and for telling an old kernel from a configured
// one. It is the only hand-kept part of the helper checks: which helpers
// are checked comes from the datapath object itself (datapathHelpers).
var helperReleases = map[string]string{
	"bpf_map_lookup_elem@cgroup_sock_addr":                "4.17",
	"bpf_map_update_elem@cgroup_sock_addr":                "4.17",
	"bpf_get_current_uid_gid@cgroup_sock_addr":            "4.17",
	"bpf_bind@cgroup_sock_addr":                           "4.17",
	"bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr": "5.7",
	"bpf_get_current_cgroup_id@cgroup_sock_addr":          "4.18",
	"bpf_sk_storage_get@cgroup_sock_addr":                 "5.11",
	"bpf_map_lookup_elem@sock_ops":                        "4.13",
	"bpf_map_update_elem@sock_ops":                        "4.13",
	"bpf_map_delete_elem@sock_ops":                        "4.13",
	"bpf_sk_storage_get@sock_ops":                         "5.3",
	"bpf_get_netns_cookie@sock_ops":                       "5.15",
	"bpf_sock_ops_cb_flags_set@sock_ops":                  "4.16",
	"bpf_sock_hash_update@sock_ops":                       "4.18",
	"bpf_map_lookup_elem@cgroup_sockopt":                  "5.3",
	"bpf_sk_storage_get@cgroup_sockopt":                   "5.3",
	"bpf_get_netns_cookie@cgroup_sockopt":                 "5.8",
	"bpf_msg_redirect_hash@sk_msg":                        "4.18",
	"bpf_map_lookup_elem@sk_lookup":                       "5.9",
	"bpf_get_netns_cookie@cgroup_sock_addr":               "5.7",
	"bpf_sk_assign@sk_lookup":                             "5.9",
	"bpf_sk_release@sk_lookup":                            "5.9",
	"bpf_map_lookup_elem@sk_msg":                          "4.17",
	"bpf_get_netns_cookie@sk_msg":                         "5.15",
	"bpf_sk_storage_get@sk_msg":                           "5.8",
}

// helpers lists each helper the datapath's programs call, per program
// type, read from the compiled datapath object: a helper is needed for
// capture when a program the capture plan loads calls it, and for splicing
// when only the splice programs do.
func helpers() []helper {
	list, err := datapathHelpers()
	if err != nil {
		panic(err) // the embedded object always parses; a test covers it
	}
	return list
}

func datapathHelpers() ([]helper, error) {
	spec, err := datapath.Spec()
	if err != nil {
		return nil, err
	}
	types := map[ebpf.ProgramType]progType{}
	for _, p := range progTypes() {
		types[p.typ] = p
	}
	byName := map[string]*helper{}
	var order []string
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p := spec.Programs[name]
		pt, ok := types[p.Type]
		if !ok {
			return nil, fmt.Errorf("datapath program %s has type %s, which the probe does not check", name, p.Type)
		}
		need := needOf(datapath.ProgramFeature(name))
		for _, ins := range p.Instructions {
			if !ins.IsBuiltinCall() {
				continue
			}
			fn := asm.BuiltinFunc(ins.Constant)
			h := helper{name: helperName(fn), fn: fn, prog: pt, need: need}
			key := h.name + "@" + pt.name
			if have, ok := byName[key]; ok {
				// Used by programs of several features: it counts for
				// the most essential of them, and turns the others off
				// as well when missing.
				other := need
				if needRank(other) < needRank(have.need) {
					have.need, other = other, have.need
				}
				if other != have.need && other != NeedCapture && !slices.Contains(have.also, other) {
					have.also = append(have.also, other)
				}
				continue
			}
			h.minKernel = helperReleases[key]
			if h.minKernel == "" {
				return nil, fmt.Errorf("helper %s: no release in helperReleases", key)
			}
			byName[key] = &h
			order = append(order, key)
		}
	}
	out := make([]helper, 0, len(order))
	for _, key := range order {
		out = append(out, *byName[key])
	}
	return out, nil
}

// needOf maps a datapath program feature to what the probe reports it
// needed for.
func needOf(feature string) Need {
	switch feature {
	case datapath.FeatureSplice:
		return NeedSplice
	case datapath.FeatureInbound:
		return NeedInbound
	case datapath.FeatureDNS:
		return NeedDNS
	}
	return NeedCapture
}

// needRank orders needs from the most essential.
func needRank(n Need) int {
	switch n {
	case NeedCapture:
		return 0
	case NeedIPv6:
		return 1
	case NeedInbound:
		return 2
	case NeedDNS:
		return 3
	case NeedSplice:
		return 4
	}
	return 5
}

// helperName turns asm.FnMapLookupElem into "bpf_map_lookup_elem".
func helperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// probeTypes checks program types, map types and helpers with
// cilium/ebpf's feature probes. Their results are cached for the process.
func probeTypes() []Feature {
	var out []Feature
	for _, p := range progTypes() {
		f := Feature{Name: p.name, Kind: KindProgramType, MinKernel: p.minKernel, NeededFor: p.need}
		out = append(out, result(f, features.HaveProgramType(p.typ)))
	}
	for _, m := range mapTypes() {
		f := Feature{Name: m.name, Kind: KindMapType, MinKernel: m.minKernel, NeededFor: m.need, Detail: m.detail}
		out = append(out, result(f, features.HaveMapType(m.typ)))
	}
	for _, h := range helpers() {
		f := Feature{Name: h.name + "@" + h.prog.name, Kind: KindHelper, MinKernel: h.minKernel, NeededFor: h.need, AlsoNeededFor: h.also}
		out = append(out, result(f, features.HaveProgramHelper(h.prog.typ, h.fn)))
	}
	return out
}
