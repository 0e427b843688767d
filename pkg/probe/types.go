package probe

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
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
		{"sockhash", ebpf.SockHash, "4.18", NeedSplice, "sockets to splice"},
		{"lpm_trie", ebpf.LPMTrie, "4.11", NeedCapture, "per-pod outbound IP ranges"},
	}
}

type helper struct {
	name      string
	fn        asm.BuiltinFunc
	prog      progType
	minKernel string
	need      Need
}

// helpers lists each helper the datapath's C calls, per program type
// (bpf/connect.c, bpf/sockops.c, bpf/sockopt.c, and the splice programs).
func helpers() []helper {
	types := progTypes()
	sockAddr, sockOps, sockopt, skMsg := types[0], types[1], types[2], types[3]
	return []helper{
		{"bpf_map_lookup_elem", asm.FnMapLookupElem, sockAddr, "4.17", NeedCapture},
		{"bpf_get_current_uid_gid", asm.FnGetCurrentUidGid, sockAddr, "4.17", NeedCapture},
		{"bpf_bind", asm.FnBind, sockAddr, "4.17", NeedCapture},
		{"bpf_get_current_ancestor_cgroup_id", asm.FnGetCurrentAncestorCgroupId, sockAddr, "5.7", NeedCapture},
		{"bpf_get_current_cgroup_id", asm.FnGetCurrentCgroupId, sockAddr, "4.18", NeedCapture},
		{"bpf_map_update_elem", asm.FnMapUpdateElem, sockAddr, "4.17", NeedCapture},
		{"bpf_sk_storage_get", asm.FnSkStorageGet, sockAddr, "5.11", NeedCapture},

		{"bpf_map_lookup_elem", asm.FnMapLookupElem, sockOps, "4.13", NeedCapture},
		{"bpf_map_update_elem", asm.FnMapUpdateElem, sockOps, "4.13", NeedCapture},
		{"bpf_map_delete_elem", asm.FnMapDeleteElem, sockOps, "4.13", NeedCapture},
		{"bpf_sk_storage_get", asm.FnSkStorageGet, sockOps, "5.3", NeedCapture},
		{"bpf_get_netns_cookie", asm.FnGetNetnsCookie, sockOps, "5.15", NeedCapture},
		{"bpf_sock_ops_cb_flags_set", asm.FnSockOpsCbFlagsSet, sockOps, "4.16", NeedCapture},
		{"bpf_sock_hash_update", asm.FnSockHashUpdate, sockOps, "4.18", NeedSplice},
		{"bpf_get_socket_cookie", asm.FnGetSocketCookie, sockOps, "4.19", NeedSplice},

		{"bpf_map_lookup_elem", asm.FnMapLookupElem, sockopt, "5.3", NeedCapture},
		{"bpf_sk_storage_get", asm.FnSkStorageGet, sockopt, "5.3", NeedCapture},
		{"bpf_get_netns_cookie", asm.FnGetNetnsCookie, sockopt, "5.8", NeedCapture},

		{"bpf_msg_redirect_hash", asm.FnMsgRedirectHash, skMsg, "4.18", NeedSplice},
		{"bpf_map_lookup_elem", asm.FnMapLookupElem, skMsg, "4.17", NeedSplice},
		{"bpf_get_netns_cookie", asm.FnGetNetnsCookie, skMsg, "5.15", NeedSplice},
	}
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
		f := Feature{Name: h.name + "@" + h.prog.name, Kind: KindHelper, MinKernel: h.minKernel, NeededFor: h.need}
		out = append(out, result(f, features.HaveProgramHelper(h.prog.typ, h.fn)))
	}
	return out
}
