/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs, maps and constants of the datapath object (bpf/datapath.c) shared
 * by its per-hook files and, through bpf2go -type, by the Go agent. Byte
 * order is stated on every address and port field.
 *
 * Addresses of both families are one type, struct sb_addr: IPv6 as is,
 * IPv4 as the v4-mapped IPv6 address ::ffff:a.b.c.d. An AF_INET socket and
 * an AF_INET6 socket carrying IPv4 (v4-mapped) then give the same key for
 * the same connection, and one code path serves both families.
 *
 * Every map is pinned by name (LIBBPF_PIN_BY_NAME) in the pinned layout's
 * versioned directory (<bpffs dir>/v<N>/, pkg/datapath/layout.go) so that
 * the maps outlive an agent restart and a new agent of the same layout
 * adopts them; within the one object the programs share them directly.
 * Changing a pinned map's definition (key, value, size, flags) takes a new
 * layout version. The earlier layout's maps are in bpf/legacy.c.
 */
#ifndef SOCKBRIDGE_H
#define SOCKBRIDGE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf_endian.h>
#include <bpf_helpers.h>

/* Not in the UAPI headers BPF C can include. */
#define SB_AF_INET 2
#define SB_AF_INET6 10
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
/* Cgroups whose pod (or lack of one) the connect hooks remember. */
#define SB_MAX_CG_CACHE 16384
/* Per-pod include/exclude lists, all pods together. */
#define SB_MAX_PORT_RULES 65536
#define SB_MAX_CIDR_RULES 16384

#define SB_LOOPBACK_NET 0x7f000000 /* 127.0.0.0/8, host order */
#define SB_PASSTHROUGH_IP 0x7f000006 /* 127.0.0.6, host order: Envoy inbound passthrough */
#define SB_LOCALHOST_IP 0x7f000001 /* 127.0.0.1, host order */
#define SB_PASSTHROUGH_IP6 6 /* ::6, last word in host order: Envoy's IPv6 inbound passthrough */

/* An IPv4 or IPv6 address, network byte order; IPv4 is stored v4-mapped
 * (::ffff:a.b.c.d), so that w[3] holds the IPv4 address. */
struct sb_addr {
	__be32 w[4];
};

/* sb_pod.flags */
enum sb_pod_flag {
	SB_POD_CAPTURE = 1 << 0, /* redirect the pod's outbound TCP to its sidecar */
	SB_POD_OUT_ALL_IPS = 1 << 1, /* every outbound destination (includeOutboundIPRanges "*") */
	SB_POD_IN_ALL_PORTS = 1 << 2, /* every inbound port (includeInboundPorts "*") */
	/* DNS to the pod's nameservers (sb_dns_servers) goes to the DNS proxy
	 * (Istio's ISTIO_META_DNS_CAPTURE, istio-iptables --redirect-dns). */
	SB_POD_DNS_CAPTURE = 1 << 3,
	/* With SB_POD_DNS_CAPTURE: every port-53 destination, not only the
	 * nameservers (istio-iptables --capture-all-dns). */
	SB_POD_DNS_ALL = 1 << 4,
};

/* The datapath's settings, fixed at load time: one const volatile value
 * (sb_cfg below) that Go builds from the mesh preset and flags and sets
 * through spec.Variables before loading. Zero until then: Go always sets it,
 * so the defaults live in one place (pkg/policy's presets). */
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
	/* 1 when the sidecar's outbound listener for IPv6 is on ::1 only
	 * (Linkerd: LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS 127.0.0.1 and
	 * [::1]): a native IPv6 connection then goes to [::1] from ::1 (the
	 * pod's IPv6 address is not bound as source). 0 when it listens on
	 * the wildcard (Envoy, Kuma: [::]): it goes to the pod's own IPv6
	 * address from that address (bpf/connect.c, outbound_listener). */
	__u16 outbound_loopback_only;
	/* Host byte order: the sidecar's DNS proxy port, on 127.0.0.1 and ::1
	 * (Istio 15053); 0 = no DNS capture (the DNS branch of the connect
	 * hooks does nothing). */
	__u16 dns_port;
	/* The earlier pinned layout whose maps bpf/legacy.c reads, for the
	 * connections that layout's programs captured before an upgrade: 1,
	 * or 0 when there is none (the fallbacks are then dead code the
	 * verifier removes). */
	__u16 legacy_layout;
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

/* Key of sb_cidr_excl and sb_cidr_incl (LPM tries): one outbound range of
 * one pod. The family word keeps the two families apart (an IPv6 range such
 * as ::/0 never matches IPv4, as with ip6tables), and the address bits
 * follow it: IPv4 in addr.w[0], IPv6 in all of addr. prefixlen counts the
 * 64 cgroup id bits, the 32 family bits and the range's own bits. */
struct sb_cidr_key {
	__u32 prefixlen;
	__u32 cgroup_lo; /* low half of the pod's cgroup id */
	__u32 cgroup_hi; /* high half */
	__u32 family; /* 4 or 6 */
	struct sb_addr addr; /* network byte order; IPv4 in w[0], not mapped */
};

/* Value of sb_pods, keyed by the pod cgroup's id (__u64, the cgroup v2
 * directory's inode number). */
struct sb_pod {
	__be32 ip4; /* pod IPv4, network byte order; 0 when unknown (no source bind) */
	__u32 flags; /* enum sb_pod_flag */
	struct sb_addr ip6; /* pod IPv6, network byte order; all zero when unknown */
};

/* Value of sb_cg_cache, keyed by a task's own cgroup id: the pod that
 * cgroup lies in, as found when sb_generation had the given value. */
struct sb_cg_entry {
	__u64 pod_cgroup_id; /* 0: in no pod */
	__u64 generation;
};

/* Value of sb_pod_ips, keyed by a pod address (struct sb_addr; IPv4
 * v4-mapped). */
struct sb_pod_ip {
	__u64 cgroup_id; /* key of the pod in sb_pods */
};

/* sb_sock.flags */
enum sb_sock_flag {
	SB_SOCK_CAPTURED = 1 << 0, /* app socket rewritten to the outbound port */
	SB_SOCK_SHORTCUT = 1 << 1, /* sidecar socket rewritten to a local pod's inbound port */
	SB_SOCK_ORIGDST = 1 << 2, /* accepted sidecar socket that knows its original dst */
	/* The socket's DNS went to the DNS proxy: addr/port are the
	 * nameserver it asked last, which replies from the proxy are given
	 * as their source. With SB_SOCK_CAPTURED too for a connected socket
	 * (UDP or TCP), whose getpeername() returns the nameserver. */
	SB_SOCK_DNS = 1 << 3,
	/* spliced socket whose bytes once took TCP: sk_msg never redirects it
	 * again (bpf/skmsg.c) */
	SB_SOCK_TCP_ONLY = 1 << 4,
};

/* Per-socket state in sb_socks (socket local storage, freed with the
 * socket): the original destination of a captured connection. */
struct sb_sock {
	struct sb_addr addr; /* network byte order; IPv4 v4-mapped */
	__be16 port; /* network byte order */
	__u16 flags; /* enum sb_sock_flag */
	__u32 pad;
};

/* Key of sb_tuples: a connection as its client sees it. */
struct sb_tuple {
	__u64 netns; /* netns cookie for connections with a node-local end, 0 for pod IP to pod IP */
	struct sb_addr client; /* network byte order; IPv4 v4-mapped */
	struct sb_addr server; /* network byte order; IPv4 v4-mapped */
	__u16 client_port; /* host byte order */
	__u16 server_port; /* host byte order */
	__u32 pad;
};

/* Key of sb_sockhash: a socket as it sees itself. */
struct sb_sock_key {
	__u64 netns; /* netns cookie when either end is node-local (loopback, ::6), else 0 */
	struct sb_addr local; /* network byte order; IPv4 v4-mapped */
	struct sb_addr remote; /* network byte order; IPv4 v4-mapped */
	__u16 local_port; /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 pad;
};

/* Indexes of sb_stats. */
enum sb_stat {
	SB_STAT_CAPTURED = 0, /* connect4/6: app connection redirected to the sidecar */
	SB_STAT_SHORTCUT, /* connect4/6: sidecar connection sent to a local pod's inbound port */
	SB_STAT_BIND_FAILED, /* connect4/6: could not bind the pod IP as source */
	SB_STAT_STORAGE_FAILED, /* socket storage could not be allocated */
	SB_STAT_TUPLE_FAILED, /* sockops: sb_tuples full or update failed */
	SB_STAT_ORIGDST_ANSWERED, /* getsockopt: SO_ORIGINAL_DST answered */
	SB_STAT_ORIGDST_UNKNOWN, /* getsockopt: SO_ORIGINAL_DST asked on an unknown socket */
	SB_STAT_PEERNAME_RESTORED, /* getpeername4/6: original destination returned */
	SB_STAT_SPLICE_ADDED, /* sockops: socket added to sb_sockhash */
	SB_STAT_SPLICE_ADD_FAILED, /* sockops: sb_sockhash update failed */
	SB_STAT_SPLICE_REDIRECTED, /* sk_msg: message redirected to the peer socket */
	SB_STAT_SPLICE_PASSED, /* sk_msg: no peer in sb_sockhash (or the socket is TCP only), message sent over TCP */
	SB_STAT_CGROUP_WALKS, /* connect4/6: ancestor cgroups searched (cache miss) */
	SB_STAT_CAPTURED_V6, /* connect6: of captured, native IPv6 destinations */
	SB_STAT_CAPTURED_MAPPED, /* connect6: of captured, v4-mapped destinations on AF_INET6 sockets */
	SB_STAT_ORIGDST_FAMILY, /* getsockopt: SO_ORIGINAL_DST asked at the other family's level */
	SB_STAT_INBOUND_REDIRECTED, /* sk_lookup: connection to a pod port handed to its sidecar */
	SB_STAT_INBOUND_REFUSED, /* sk_lookup: captured, but the sidecar does not listen: refused */
	SB_STAT_LISTENER_ADDED, /* sockops: a sidecar inbound listener entered sb_listeners */
	SB_STAT_LISTENER_ADD_FAILED, /* sockops: sb_listeners update failed */
	SB_STAT_ORIGDST_INBOUND, /* getsockopt: SO_ORIGINAL_DST answered with an inbound socket's own address */
	SB_STAT_BIND_REFUSED, /* bind4/6: an app bound a captured port before its inbound capture was attached */
	SB_STAT_DNS_CAPTURED, /* sendmsg4/6: a query sent to the DNS proxy instead of a nameserver */
	SB_STAT_DNS_CONNECTED, /* connect4/6: a UDP or TCP socket to port 53 connected to the DNS proxy */
	SB_STAT_DNS_RESTORED, /* recvmsg4/6: a DNS proxy reply given the nameserver as source */
	SB_STAT_SPLICE_SKIPPED, /* sockops: not spliced, its first bytes travel over TCP (Fast Open) */
	SB_STAT_SPLICE_TCP_ONLY, /* sk_msg: a message took TCP, the socket stays on TCP */
	SB_STAT_LEGACY_SOCK, /* a socket's state taken from the earlier layout's storage (legacy.c) */
	SB_STAT_LEGACY_TUPLE, /* a handshake's original destination taken from the earlier layout's sb_tuples */
	SB_STAT_MAX,
};

/* Slots of sb_stats: more than enum sb_stat needs, so that a new counter
 * does not change the pinned map's definition (which would take a new
 * pinned layout version, docs/datapath.md). */
#define SB_STAT_SLOTS 64
_Static_assert(SB_STAT_MAX <= SB_STAT_SLOTS, "sb_stats has fewer slots than enum sb_stat");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_PODS);
	__type(key, __u64);
	__type(value, struct sb_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_pods SEC(".maps");

/* Every pod address, both families: up to one IPv4 and one IPv6 per pod. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SB_MAX_PODS);
	__type(key, struct sb_addr);
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

/* Kernel: LPM tries 4.11. Both families share each trie (see
 * struct sb_cidr_key). */
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

/* Key of sb_listeners: the sidecar's inbound listener of one family in one
 * pod network namespace. */
struct sb_listener_key {
	__u64 netns; /* netns cookie */
	__u32 family; /* 4: AF_INET listener; 6: AF_INET6 listener */
	__u32 pad;
};

/* The sidecars' inbound listeners (port sb_cfg.inbound_port), added by
 * sockops when they listen; the kernel removes a socket when it closes.
 * sk_lookup hands captured inbound connections to them. Kernel: listening
 * sockets in a sockhash 5.7. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * SB_MAX_PODS);
	__type(key, struct sb_listener_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_listeners SEC(".maps");

/* The network namespace of each pod whose inbound traffic is captured:
 * pod cgroup id -> netns cookie, written by the agent when it attaches
 * sk_lookup to the pod's namespace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_pod_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SB_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_stats SEC(".maps");

/* Most nameservers a pod has: the kubelet writes at most 3 into a pod's
 * resolv.conf (its MaxDNSNameservers). */
#define SB_MAX_NAMESERVERS 3
/* Port 53, where queries to nameservers go, host order. */
#define SB_DNS_PORT 53
#define SB_SOCK_DGRAM 2
#define SB_IPPROTO_UDP 17

/* Key of sb_dns_servers: one nameserver of one pod. */
struct sb_dns_key {
	__u64 cgroup_id; /* the pod */
	struct sb_addr addr; /* network byte order; IPv4 v4-mapped */
};

/* The nameservers of each pod that captures DNS, both families: a query
 * to port 53 of one of them goes to the DNS proxy (unless the pod captures
 * every port-53 destination, SB_POD_DNS_ALL). Value unused (1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_NAMESERVERS *SB_MAX_PODS);
	__type(key, struct sb_dns_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sb_dns_servers SEC(".maps");

/* Loads a 32-bit field of a context or socket pointer p with one
 * instruction at its fixed offset. Where two branches read different fields
 * (local_ip4 or local_ip6[i], by family) into the same place, clang
 * otherwise merges the loads into one through a computed pointer, which
 * the verifier rejects ("dereference of modified ctx ptr"); neither
 * volatile nor a compiler barrier stops that merge, an asm load does. */
#define SB_LOAD_U32(p, field)                                                         \
	({                                                                            \
		__u32 __v;                                                            \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                 \
			     : "=r"(__v)                                              \
			     : "r"(p), "i"(__builtin_offsetof(typeof(*(p)), field))); \
		__v;                                                                  \
	})

/* Loads the IPv6 address field f (four __u32 words) of p into a. */
#define SB_LOAD_ADDR6(a, p, f)                    \
	do {                                      \
		(a)->w[0] = SB_LOAD_U32(p, f[0]); \
		(a)->w[1] = SB_LOAD_U32(p, f[1]); \
		(a)->w[2] = SB_LOAD_U32(p, f[2]); \
		(a)->w[3] = SB_LOAD_U32(p, f[3]); \
	} while (0)

static __always_inline void sb_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sb_stats, &stat);

	if (v)
		*v += 1;
}

/* Sets a to the v4-mapped form of ip4 (network byte order). */
static __always_inline void sb_addr_set4(struct sb_addr *a, __be32 ip4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4;
}

/* Whether a holds an IPv4 address (v4-mapped). */
static __always_inline bool sb_addr_is4(const struct sb_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool sb_addr_eq(const struct sb_addr *a, const struct sb_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

static __always_inline bool sb_addr_is_zero(const struct sb_addr *a)
{
	return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]);
}

/* Whether a is the IPv6 address with all words zero but the last, which
 * is last (host byte order): ::1, ::6. */
static __always_inline bool sb_addr_is6_low(const struct sb_addr *a, __u32 last)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && a->w[3] == bpf_htonl(last);
}

/* 127.0.0.0/8 or ::1: the destinations that stay on loopback. */
static __always_inline bool sb_addr_is_loopback(const struct sb_addr *a)
{
	if (sb_addr_is4(a))
		return (bpf_ntohl(a->w[3]) & 0xff000000) == SB_LOOPBACK_NET;
	return sb_addr_is6_low(a, 1);
}

/* Envoy's inbound passthrough source: 127.0.0.6 or ::6. */
static __always_inline bool sb_addr_is_passthrough(const struct sb_addr *a)
{
	if (sb_addr_is4(a))
		return a->w[3] == bpf_htonl(SB_PASSTHROUGH_IP);
	return sb_addr_is6_low(a, SB_PASSTHROUGH_IP6);
}

/* Whether a connection between a and b needs the netns cookie in its key:
 * an end that every pod has (loopback, the passthrough address ::6) is only
 * unique within its namespace; pod IP to pod IP connections are unique on
 * the node and may cross namespaces (same-node shortcut). */
static __always_inline bool sb_needs_netns(const struct sb_addr *a, const struct sb_addr *b)
{
	return sb_addr_is_loopback(a) || sb_addr_is_loopback(b) || sb_addr_is_passthrough(a) ||
	       sb_addr_is_passthrough(b);
}

/* The include/exclude bits of a pod's port, 0 when listed nowhere. */
static __always_inline __u8 sb_port_policy(__u64 cgroup_id, __u16 port, __u8 dir)
{
	struct sb_port_key key = {};
	__u8 *v;

	key.cgroup_id = cgroup_id;
	key.port = port;
	key.dir = dir;
	v = bpf_map_lookup_elem(&sb_ports, &key);
	return v ? *v : 0;
}

/* Whether one of a pod's ranges in trie contains a. */
static __always_inline bool sb_cidr_match(void *trie, __u64 cgroup_id, const struct sb_addr *a)
{
	struct sb_cidr_key key = {};

	key.cgroup_lo = (__u32)cgroup_id;
	key.cgroup_hi = (__u32)(cgroup_id >> 32);
	if (sb_addr_is4(a)) {
		key.prefixlen = 64 + 32 + 32;
		key.family = 4;
		key.addr.w[0] = a->w[3];
	} else {
		key.prefixlen = 64 + 32 + 128;
		key.family = 6;
		key.addr = *a;
	}
	return bpf_map_lookup_elem(trie, &key) != NULL;
}

static __always_inline bool sb_skip_inbound_port(__u16 port)
{
	int i;

	for (i = 0; i < SB_MAX_SKIP_PORTS; i++) {
		if (sb_cfg.inbound_skip_ports[i] && sb_cfg.inbound_skip_ports[i] == port)
			return true;
	}
	return false;
}

/* Whether a pod's inbound capture takes port (host byte order), as its
 * ISTIO_INBOUND chain would decide: never-captured ports and excluded
 * ports first, then every port or the included ones. */
static __always_inline bool sb_inbound_captured(const struct sb_pod *pod, __u64 cgroup_id,
						__u16 port)
{
	__u8 action;

	if (sb_skip_inbound_port(port))
		return false;
	action = sb_port_policy(cgroup_id, port, SB_DIR_INBOUND);
	if (action & SB_PORT_EXCLUDE)
		return false;
	return (pod->flags & SB_POD_IN_ALL_PORTS) || (action & SB_PORT_INCLUDE);
}

/* The captured pod whose inbound capture takes a connection from remote to
 * local:local_port (a pod address; port in host byte order), and its
 * cgroup id; NULL for a connection left alone: not a captured pod's
 * address, one of the sidecar's own ports, a port the pod's inbound policy
 * does not capture, Envoy's passthrough, or the pod's own local traffic
 * (from loopback or from its own address). */
static __always_inline struct sb_pod *sb_inbound_pod(const struct sb_addr *local, __u16 local_port,
						     const struct sb_addr *remote, __u64 *cgroup_id)
{
	struct sb_pod_ip *pi = bpf_map_lookup_elem(&sb_pod_ips, local);
	struct sb_pod *pod;
	__u64 id;

	if (!pi)
		return NULL;
	id = pi->cgroup_id;
	pod = bpf_map_lookup_elem(&sb_pods, &id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE))
		return NULL;
	if (local_port == sb_cfg.inbound_port || local_port == sb_cfg.outbound_port)
		return NULL;
	if (sb_addr_is_loopback(remote) || sb_addr_is_passthrough(remote))
		return NULL;
	if (sb_addr_is4(remote) ? (pod->ip4 && remote->w[3] == pod->ip4) :
				  sb_addr_eq(remote, &pod->ip6))
		return NULL;
	if (!sb_inbound_captured(pod, id, local_port))
		return NULL;
	*cgroup_id = id;
	return pod;
}

/* A socket's own addresses (struct bpf_sock: src_ip4/6, dst_ip4/6 by
 * family), both families in the sb_addr form. Returns false for a family
 * other than AF_INET and AF_INET6. */
static __always_inline bool sb_sock_addrs(struct bpf_sock *sk, struct sb_addr *src,
					  struct sb_addr *dst)
{
	__u32 family = sk->family;

	if (family == SB_AF_INET) {
		sb_addr_set4(src, SB_LOAD_U32(sk, src_ip4));
		sb_addr_set4(dst, SB_LOAD_U32(sk, dst_ip4));
		return true;
	}
	if (family == SB_AF_INET6) {
		SB_LOAD_ADDR6(src, sk, src_ip6);
		SB_LOAD_ADDR6(dst, sk, dst_ip6);
		return true;
	}
	return false;
}

#endif /* SOCKBRIDGE_H */
