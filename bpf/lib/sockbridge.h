/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs, maps and constants of the datapath object (bpf/datapath.c) shared
 * by its per-hook files and, through bpf2go -type, by the Go agent. Byte
 * order is stated on every address and port field.
 *
 * Every map is pinned by name (LIBBPF_PIN_BY_NAME) under the agent's bpffs
 * directory so that the maps outlive an agent restart and a new agent adopts
 * them; within the one object the programs share them directly.
 */
#ifndef SOCKBRIDGE_H
#define SOCKBRIDGE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf_endian.h>
#include <bpf_helpers.h>

/* Not in the UAPI headers BPF C can include. */
#define SB_AF_INET 2
#define SB_SOCK_STREAM 1

#define SB_MAX_PODS 4096
/* In-flight handshakes only: an entry lives from the client's
 * TCP_CONNECT_CB (its SYN) to the sidecar's PASSIVE_ESTABLISHED. */
#define SB_MAX_TUPLES 65536
/* Sockets of live captured flows that can be spliced (two per flow). */
#define SB_MAX_SPLICED 131072
/* Deepest cgroup level searched for a pod cgroup (kubepods/<qos>/pod<uid> is
 * level 2 or 3; nested kubelets such as kind add a few more). */
#define SB_MAX_CGROUP_LEVEL 12
#define SB_MAX_SKIP_PORTS 8
/* Cgroups whose pod (or lack of one) connect4 remembers. */
#define SB_MAX_CG_CACHE 16384
/* Per-pod include/exclude lists, all pods together. */
#define SB_MAX_PORT_RULES 65536
#define SB_MAX_CIDR_RULES 16384

#define SB_LOOPBACK_NET 0x7f000000 /* 127.0.0.0/8, host order */
#define SB_PASSTHROUGH_IP 0x7f000006 /* 127.0.0.6, host order: Envoy inbound passthrough */
#define SB_LOCALHOST_IP 0x7f000001 /* 127.0.0.1, host order */

/* sb_pod.flags */
enum sb_pod_flag {
	SB_POD_CAPTURE = 1 << 0, /* redirect the pod's outbound TCP to its sidecar */
	SB_POD_OUT_ALL_IPS = 1 << 1, /* every outbound destination (includeOutboundIPRanges "*") */
	SB_POD_IN_ALL_PORTS = 1 << 2, /* every inbound port (includeInboundPorts "*") */
};

/* The datapath's settings, fixed at load time: one const volatile value
 * (sb_cfg in datapath.c) that Go builds from the mesh preset and flags and
 * sets through spec.Variables before loading. Zero until then: Go always
 * sets it, so the defaults live in one place (pkg/policy's presets). */
struct sb_config {
	__u32 proxy_uid; /* the sidecar's uid: its connections are not captured */
	__u32 proxy_gid; /* the sidecar's gid */
	__u16 outbound_port; /* host byte order: where captured connects go (Istio 15001) */
	__u16 inbound_port; /* host byte order: the sidecar's inbound port (Istio 15006) */
	/* Host byte order: the one port of its own pod IP a sidecar reaches
	 * directly instead of through its inbound port (Istio's HBONE 15008);
	 * 0 = none. */
	__u16 tunnel_port;
	/* Host byte order: ports a sidecar's same-node connection is never short
	 * cut for (Istio: 15008, 15020, 15021, 15090); 0 = unused slot. */
	__u16 inbound_skip_ports[SB_MAX_SKIP_PORTS];
	__u16 pad;
};

/* The one load-time config of the datapath (see struct sb_config). */
const volatile struct sb_config sb_cfg = {};

/* Value of sb_ports. */
enum sb_port_action {
	SB_PORT_INCLUDE = 1 << 0,
	SB_PORT_EXCLUDE = 1 << 1,
};

enum sb_direction {
	SB_DIR_OUTBOUND = 0,
	SB_DIR_INBOUND = 1,
};

/* Key of sb_ports: one port of one pod's include or exclude list. */
struct sb_port_key {
	__u64 cgroup_id; /* the pod */
	__u16 port; /* host byte order */
	__u8 dir; /* enum sb_direction */
	__u8 pad[5];
};

/* Key of sb_cidr_excl and sb_cidr_incl (LPM tries): one outbound IPv4
 * range of one pod. prefixlen counts the 64 cgroup id bits plus the
 * range's own bits. */
struct sb_cidr_key {
	__u32 prefixlen;
	__u32 cgroup_lo; /* low half of the pod's cgroup id */
	__u32 cgroup_hi; /* high half */
	__u32 ip4; /* network byte order */
};

/* Value of sb_pods, keyed by the pod cgroup's id (__u64, the cgroup v2
 * directory's inode number). */
struct sb_pod {
	__u32 ip4; /* pod IPv4, network byte order; 0 when unknown (no source bind) */
	__u32 flags; /* enum sb_pod_flag */
};

/* Value of sb_cg_cache, keyed by a task's own cgroup id: the pod that
 * cgroup lies in, as found when sb_generation had the given value. */
struct sb_cg_entry {
	__u64 pod_cgroup_id; /* 0: in no pod */
	__u64 generation;
};

/* Value of sb_pod_ips, keyed by a pod IPv4 (__u32, network byte order). */
struct sb_pod_ip {
	__u64 cgroup_id; /* key of the pod in sb_pods */
};

/* sb_sock.flags */
enum sb_sock_flag {
	SB_SOCK_CAPTURED = 1 << 0, /* app socket rewritten to the outbound port */
	SB_SOCK_SHORTCUT = 1 << 1, /* sidecar socket rewritten to a local pod's inbound port */
	SB_SOCK_ORIGDST = 1 << 2, /* accepted sidecar socket that knows its original dst */
	/* sidecar -> app inbound passthrough (127.0.0.6); no longer set: it
	 * marked sockets to splice, and application sockets are not spliced */
	SB_SOCK_PASSTHROUGH = 1 << 3,
	/* spliced socket whose bytes once took TCP: sk_msg never redirects it
	 * again (bpf/skmsg.c) */
	SB_SOCK_TCP_ONLY = 1 << 4,
};

/* Per-socket state in sb_sock (socket local storage, freed with the socket). */
struct sb_sock {
	__u32 ip4; /* original destination IPv4, network byte order */
	__u16 port; /* original destination port, network byte order */
	__u16 flags; /* enum sb_sock_flag */
};

/* Key of sb_tuples: a connection as its client sees it. */
struct sb_tuple {
	__u64 netns; /* netns cookie for loopback connections, 0 for pod IP to pod IP */
	__u32 client_ip4; /* network byte order */
	__u32 server_ip4; /* network byte order */
	__u16 client_port; /* host byte order */
	__u16 server_port; /* host byte order */
	__u32 pad;
};

/* Key of sb_sockhash: a socket as it sees itself. */
struct sb_sock_key {
	__u64 netns; /* netns cookie when either end is in 127.0.0.0/8, else 0 */
	__u32 local_ip4; /* network byte order */
	__u32 remote_ip4; /* network byte order */
	__u16 local_port; /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 pad;
};

/* Indexes of sb_stats. */
enum sb_stat {
	SB_STAT_CAPTURED = 0, /* connect4: app connection redirected to the sidecar */
	SB_STAT_SHORTCUT, /* connect4: sidecar connection sent to a local pod's inbound port */
	SB_STAT_BIND_FAILED, /* connect4: could not bind the pod IP as source */
	SB_STAT_STORAGE_FAILED, /* socket storage could not be allocated */
	SB_STAT_TUPLE_FAILED, /* sockops: sb_tuples full or update failed */
	SB_STAT_ORIGDST_ANSWERED, /* getsockopt: SO_ORIGINAL_DST answered */
	SB_STAT_ORIGDST_UNKNOWN, /* getsockopt: SO_ORIGINAL_DST asked on an unknown socket */
	SB_STAT_PEERNAME_RESTORED, /* getpeername4: original destination returned */
	SB_STAT_SPLICE_ADDED, /* sockops: socket added to sb_sockhash */
	SB_STAT_SPLICE_ADD_FAILED, /* sockops: sb_sockhash update failed */
	SB_STAT_SPLICE_REDIRECTED, /* sk_msg: message redirected to the peer socket */
	SB_STAT_SPLICE_PASSED, /* sk_msg: no peer in sb_sockhash (or the socket is TCP only), message sent over TCP */
	SB_STAT_CGROUP_WALKS, /* connect4: ancestor cgroups searched (cache miss) */
	SB_STAT_SPLICE_SKIPPED, /* sockops: not spliced, its first bytes travel over TCP (Fast Open) */
	SB_STAT_SPLICE_TCP_ONLY, /* sk_msg: a message took TCP, the socket stays on TCP */
	SB_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_PODS);
	__type(key, __u64);
	__type(value, struct sb_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_PODS);
	__type(key, __u32);
	__type(value, struct sb_pod_ip);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sb_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_TUPLES);
	__type(key, struct sb_tuple);
	__type(value, struct sb_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_tuples SEC(".maps");

/* Which pod a cgroup lies in, so that connect() walks the ancestors once
 * per cgroup and not on every call. A cache: eviction only costs a walk. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SB_MAX_CG_CACHE);
	__type(key, __u64);
	__type(value, struct sb_cg_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_cg_cache SEC(".maps");

/* Bumped by the agent whenever it adds a pod that was not in sb_pods, which
 * invalidates every cached "in no pod" answer. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_generation SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_PORT_RULES);
	__type(key, struct sb_port_key);
	__type(value, __u8); /* enum sb_port_action bits */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_ports SEC(".maps");

/* Kernel: LPM tries 4.11. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SB_MAX_CIDR_RULES);
	__type(key, struct sb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_cidr_excl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SB_MAX_CIDR_RULES);
	__type(key, struct sb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_cidr_incl SEC(".maps");

/* Sockets of captured flows whose bytes sk_msg may redirect to their peer.
 * The kernel removes a socket when it closes. Kernel: sockhash 4.18. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SB_MAX_SPLICED);
	__type(key, struct sb_sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_stats SEC(".maps");

static __always_inline void sb_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sb_stats, &stat);

	if (v)
		*v += 1;
}

/* ip4 in network byte order. */
static __always_inline int sb_is_loopback(__u32 ip4)
{
	return (bpf_ntohl(ip4) & 0xff000000) == SB_LOOPBACK_NET;
}

/* The netns part of a key: connections with a loopback end are only unique
 * within their namespace; pod IP to pod IP connections are unique on the
 * node and may cross namespaces (same-node shortcut). */
static __always_inline int sb_needs_netns(__u32 a_ip4, __u32 b_ip4)
{
	return sb_is_loopback(a_ip4) || sb_is_loopback(b_ip4);
}

/* The include/exclude bits of a pod's port, 0 when listed nowhere. */
static __always_inline __u8 sb_port_policy(__u64 cgroup_id, __u16 port, __u8 dir)
{
	struct sb_port_key key = { .cgroup_id = cgroup_id, .port = port, .dir = dir };
	__u8 *v = bpf_map_lookup_elem(&sb_ports, &key);

	return v ? *v : 0;
}

/* Whether one of a pod's ranges in trie contains ip4 (network byte order). */
static __always_inline int sb_cidr_match(void *trie, __u64 cgroup_id, __u32 ip4)
{
	struct sb_cidr_key key = {
		.prefixlen = 64 + 32,
		.cgroup_lo = (__u32)cgroup_id,
		.cgroup_hi = (__u32)(cgroup_id >> 32),
		.ip4 = ip4,
	};

	return bpf_map_lookup_elem(trie, &key) != NULL;
}

/* Whether ip4 (network byte order) belongs to a captured pod on this node. */
static __always_inline int sb_is_captured_pod_ip(__u32 ip4)
{
	struct sb_pod_ip *pi = bpf_map_lookup_elem(&sb_pod_ips, &ip4);
	struct sb_pod *pod;

	if (!pi)
		return 0;
	pod = bpf_map_lookup_elem(&sb_pods, &pi->cgroup_id);
	return pod && (pod->flags & SB_POD_CAPTURE);
}

#endif /* SOCKBRIDGE_H */
