// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup sock_addr programs: outbound capture at connect() and the matching
 * getpeername() answer. Part of the one datapath object: compiled through
 * bpf/datapath.c, not on its own.
 *
 * Kernel: cgroup/connect4 4.17, bpf_bind 4.17, bpf_sk_storage_get from
 * sock_addr programs 5.11 (earlier kernels reject the program),
 * bpf_get_current_ancestor_cgroup_id 5.7, bpf_get_current_cgroup_id 4.18,
 * LRU hash 4.10, cgroup/getpeername4 5.8.
 */
#include "lib/sockbridge.h"

/* Finds the pod cgroup above the current task by looking up each ancestor
 * cgroup in sb_pods; pod cgroups do not nest, so the first hit is the pod.
 * Returns the pod's cgroup id, 0 when there is none. */
static __always_inline __u64 walk_to_pod(void)
{
	__u64 id;
	int level;

	sb_count(SB_STAT_CGROUP_WALKS);
	for (level = 1; level <= SB_MAX_CGROUP_LEVEL; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&sb_pods, &id))
			return id;
	}
	return 0;
}

/* Finds the pod the current task belongs to. The answer per cgroup is
 * cached in sb_cg_cache: a cgroup's place in the hierarchy never changes,
 * a cached pod is still looked up in sb_pods (so a removed pod is gone at
 * once), and a cached "in no pod" only holds until the agent adds a pod
 * (sb_generation). */
static __always_inline struct sb_pod *current_pod(__u64 *cgroup_id)
{
	__u64 self = bpf_get_current_cgroup_id();
	struct sb_cg_entry *cached, entry = {};
	__u32 zero = 0;
	__u64 *gen;

	gen = bpf_map_lookup_elem(&sb_generation, &zero);
	if (gen)
		entry.generation = *gen;
	cached = bpf_map_lookup_elem(&sb_cg_cache, &self);
	if (cached && cached->generation == entry.generation) {
		entry.pod_cgroup_id = cached->pod_cgroup_id;
	} else {
		entry.pod_cgroup_id = walk_to_pod();
		bpf_map_update_elem(&sb_cg_cache, &self, &entry, BPF_ANY);
	}
	if (!entry.pod_cgroup_id)
		return NULL;
	*cgroup_id = entry.pod_cgroup_id;
	return bpf_map_lookup_elem(&sb_pods, cgroup_id);
}

static __always_inline int is_proxy(void)
{
	__u64 ugid = bpf_get_current_uid_gid();

	return (__u32)ugid == sb_cfg.proxy_uid || (__u32)(ugid >> 32) == sb_cfg.proxy_gid;
}

static __always_inline int skip_inbound_port(__u16 port)
{
	int i;

	for (i = 0; i < SB_MAX_SKIP_PORTS; i++) {
		if (sb_cfg.inbound_skip_ports[i] && sb_cfg.inbound_skip_ports[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int remember(struct bpf_sock_addr *ctx, __u16 flags)
{
	struct sb_sock *s;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return -1;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		sb_count(SB_STAT_STORAGE_FAILED);
		return -1;
	}
	s->ip4 = ctx->user_ip4;
	s->port = (__u16)ctx->user_port;
	s->flags = flags;
	return 0;
}

/* Whether the destination pod's inbound capture takes port, as its
 * ISTIO_INBOUND chain would decide on arrival: never-captured ports and
 * excluded ports first, then every port or the included ones. */
static __always_inline int inbound_captured(struct sb_pod *pod, __u64 cgroup_id, __u16 port)
{
	__u8 action;

	if (skip_inbound_port(port))
		return 0;
	action = sb_port_policy(cgroup_id, port, SB_DIR_INBOUND);
	if (action & SB_PORT_EXCLUDE)
		return 0;
	return (pod->flags & SB_POD_IN_ALL_PORTS) || (action & SB_PORT_INCLUDE);
}

/* A sidecar connection to a meshed pod on this node goes to that pod's
 * inbound port, as the pod's ISTIO_INBOUND chain would redirect it on
 * arrival; to its own pod IP it goes to its own inbound port for any port
 * but 15008, as istio-iptables' "-o lo ! -d 127.0.0.1 -m owner
 * --uid-owner 1337 -j ISTIO_IN_REDIRECT" rule does. Envoy's inbound
 * passthrough from 127.0.0.6 is left alone. */
static __always_inline void proxy_connect(struct bpf_sock_addr *ctx, __u64 own_cgroup_id)
{
	struct sb_pod_ip *dst_pod;
	struct sb_pod *pod;
	__u32 dst_ip4 = ctx->user_ip4;
	__u16 dst_port = bpf_ntohs((__u16)ctx->user_port);
	__u64 dst_cgroup_id;

	if (sb_is_loopback(dst_ip4) || dst_port == sb_cfg.inbound_port)
		return;
	if (ctx->sk && ctx->sk->src_ip4 == bpf_htonl(SB_PASSTHROUGH_IP))
		return;
	dst_pod = bpf_map_lookup_elem(&sb_pod_ips, &dst_ip4);
	if (!dst_pod)
		return;
	dst_cgroup_id = dst_pod->cgroup_id;
	pod = bpf_map_lookup_elem(&sb_pods, &dst_cgroup_id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE))
		return;
	if (dst_cgroup_id == own_cgroup_id) {
		if (sb_cfg.tunnel_port && dst_port == sb_cfg.tunnel_port)
			return;
	} else if (!inbound_captured(pod, dst_cgroup_id, dst_port)) {
		return;
	}
	if (remember(ctx, SB_SOCK_SHORTCUT))
		return;
	ctx->user_port = bpf_htons(sb_cfg.inbound_port);
	sb_count(SB_STAT_SHORTCUT);
}

/* Whether the app's connection goes to the sidecar, with istio-iptables'
 * ISTIO_OUTPUT precedence: excluded ports, local destinations, excluded
 * ranges, included ports, then every destination or the included ranges. */
static __always_inline int outbound_captured(struct sb_pod *pod, __u64 cgroup_id, __u32 dst_ip4,
					     __u16 dst_port)
{
	__u8 action = sb_port_policy(cgroup_id, dst_port, SB_DIR_OUTBOUND);

	if (action & SB_PORT_EXCLUDE)
		return 0;
	/* The app's own local traffic (127.0.0.0/8 and its pod IP) stays
	 * local, as istio-iptables' "-o lo ... -j RETURN" rules leave it. */
	if (sb_is_loopback(dst_ip4) || (pod->ip4 && dst_ip4 == pod->ip4))
		return 0;
	if (sb_cidr_match(&sb_cidr_excl, cgroup_id, dst_ip4))
		return 0;
	if (action & SB_PORT_INCLUDE)
		return 1;
	return (pod->flags & SB_POD_OUT_ALL_IPS) ||
	       sb_cidr_match(&sb_cidr_incl, cgroup_id, dst_ip4);
}

SEC("cgroup/connect4")
int connect4_redirect(struct bpf_sock_addr *ctx)
{
	struct sb_pod *pod;
	__u64 cgroup_id = 0;

	if (ctx->type != SB_SOCK_STREAM)
		return 1;
	pod = current_pod(&cgroup_id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE))
		return 1;
	if (is_proxy()) {
		proxy_connect(ctx, cgroup_id);
		return 1;
	}
	if (!outbound_captured(pod, cgroup_id, ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port)))
		return 1;
	if (remember(ctx, SB_SOCK_CAPTURED))
		return 1;
	if (pod->ip4 && ctx->sk && !ctx->sk->src_ip4) {
		struct sockaddr_in sa = {
			.sin_family = SB_AF_INET,
			.sin_addr.s_addr = pod->ip4,
		};

		if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
			sb_count(SB_STAT_BIND_FAILED);
	}
	ctx->user_ip4 = bpf_htonl(SB_LOCALHOST_IP);
	ctx->user_port = bpf_htons(sb_cfg.outbound_port);
	sb_count(SB_STAT_CAPTURED);
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4_restore(struct bpf_sock_addr *ctx)
{
	struct sb_sock *s;

	if (!ctx->sk)
		return 1;
	s = bpf_sk_storage_get(&sb_socks, ctx->sk, 0, 0);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return 1;
	ctx->user_ip4 = s->ip4;
	ctx->user_port = s->port;
	sb_count(SB_STAT_PEERNAME_RESTORED);
	return 1;
}
