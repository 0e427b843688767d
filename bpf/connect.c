// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup sock_addr programs: outbound capture at connect() and the matching
 * getpeername() answer, for both address families. Part of the one datapath
 * object: compiled through bpf/datapath.c, not on its own.
 *
 * connect6 sees every connect() of an AF_INET6 socket, including those to a
 * v4-mapped address (::ffff:a.b.c.d), which the kernel then carries over
 * IPv4 without running connect4: such a destination is captured exactly
 * like IPv4 (same policy, the sidecar's IPv4 listener at
 * ::ffff:127.0.0.1), so that no socket family bypasses the sidecar. Native
 * IPv6 destinations go to the sidecar's IPv6 listener at the pod's own IPv6
 * address, from that address, or at [::1] from ::1 (see
 * outbound_listener): never from the pod address to ::1, a pair whose
 * close leaves the sidecar's socket in LAST-ACK.
 *
 * Kernel: cgroup/connect4 and connect6 4.17, bpf_bind 4.17,
 * bpf_sk_storage_get from sock_addr programs 5.11 (earlier kernels reject
 * the program), bpf_get_current_ancestor_cgroup_id 5.7,
 * bpf_get_current_cgroup_id 4.18, LRU hash 4.10, cgroup/getpeername4 and
 * getpeername6 5.8.
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

static __always_inline bool is_proxy(void)
{
	__u64 ugid = bpf_get_current_uid_gid();

	return (__u32)ugid == sb_cfg.proxy_uid || (__u32)(ugid >> 32) == sb_cfg.proxy_gid;
}

/* The destination of a connect(): user_ip4 or user_ip6 by hook. */
static __always_inline void dest_of(struct bpf_sock_addr *ctx, struct sb_addr *dst, const bool v6)
{
	if (v6)
		SB_LOAD_ADDR6(dst, ctx, user_ip6);
	else
		sb_addr_set4(dst, SB_LOAD_U32(ctx, user_ip4));
}

/* Rewrites the destination address of a connect(), in the socket's own
 * family: an AF_INET6 socket gets a v4-mapped address for IPv4. */
static __always_inline void set_dest(struct bpf_sock_addr *ctx, const struct sb_addr *a,
				     const bool v6)
{
	if (v6) {
		ctx->user_ip6[0] = a->w[0];
		ctx->user_ip6[1] = a->w[1];
		ctx->user_ip6[2] = a->w[2];
		ctx->user_ip6[3] = a->w[3];
	} else {
		ctx->user_ip4 = a->w[3];
	}
}

/* Stores the original destination in the socket's storage. */
static __always_inline int remember(struct bpf_sock_addr *ctx, const struct sb_addr *dst,
				    __u16 flags)
{
	struct bpf_sock *sk = ctx->sk;
	struct sb_sock *s;

	if (!sk)
		return -1;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		sb_count(SB_STAT_STORAGE_FAILED);
		return -1;
	}
	s->addr = *dst;
	s->port = (__be16)ctx->user_port;
	s->flags = flags;
	return 0;
}

/* A sidecar connection to a meshed pod on this node goes to that pod's
 * inbound port, as the pod's ISTIO_INBOUND chain would redirect it on
 * arrival; to its own pod IP it goes to its own inbound port for any port
 * but 15008, as istio-iptables' "-o lo ! -d 127.0.0.1 (::1) -m owner
 * --uid-owner 1337 -j ISTIO_IN_REDIRECT" rule does. Envoy's inbound
 * passthrough from 127.0.0.6 (::6) is left alone. The address is kept, so
 * either family works alike. */
static __always_inline void proxy_connect(struct bpf_sock_addr *ctx, const struct sb_addr *dst,
					  __u64 own_cgroup_id)
{
	struct sb_addr src = {}, peer = {};
	struct sb_pod_ip *dst_pod;
	struct sb_pod *pod;
	__u16 dst_port = bpf_ntohs((__u16)ctx->user_port);
	__u64 dst_cgroup_id;

	if (sb_addr_is_loopback(dst) || dst_port == sb_cfg.inbound_port)
		return;
	if (ctx->sk && sb_sock_addrs(ctx->sk, &src, &peer) && sb_addr_is_passthrough(&src))
		return;
	dst_pod = bpf_map_lookup_elem(&sb_pod_ips, dst);
	if (!dst_pod)
		return;
	dst_cgroup_id = dst_pod->cgroup_id;
	pod = bpf_map_lookup_elem(&sb_pods, &dst_cgroup_id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE))
		return;
	if (dst_cgroup_id == own_cgroup_id) {
		if (sb_cfg.tunnel_port && dst_port == sb_cfg.tunnel_port)
			return;
	} else if (!sb_inbound_captured(pod, dst_cgroup_id, dst_port)) {
		return;
	}
	if (remember(ctx, dst, SB_SOCK_SHORTCUT))
		return;
	ctx->user_port = bpf_htons(sb_cfg.inbound_port);
	sb_count(SB_STAT_SHORTCUT);
}

/* Whether dst is one of the pod's own addresses. */
static __always_inline bool is_own_ip(struct sb_pod *pod, const struct sb_addr *dst)
{
	if (sb_addr_is4(dst))
		return pod->ip4 && dst->w[3] == pod->ip4;
	return !sb_addr_is_zero(&pod->ip6) && sb_addr_eq(dst, &pod->ip6);
}

/* Whether the app's connection goes to the sidecar, with istio-iptables'
 * ISTIO_OUTPUT precedence (the same for iptables and ip6tables): excluded
 * ports, local destinations, excluded ranges, included ports, then every
 * destination or the included ranges. */
static __always_inline bool outbound_captured(struct sb_pod *pod, __u64 cgroup_id,
					      const struct sb_addr *dst, __u16 dst_port)
{
	__u8 action = sb_port_policy(cgroup_id, dst_port, SB_DIR_OUTBOUND);

	if (action & SB_PORT_EXCLUDE)
		return false;
	/* The app's own local traffic (loopback and its pod IPs) stays
	 * local, as istio-iptables' "-o lo ... -j RETURN" rules leave it. */
	if (sb_addr_is_loopback(dst) || is_own_ip(pod, dst))
		return false;
	if (sb_cidr_match(&sb_cidr_excl, cgroup_id, dst))
		return false;
	if (action & SB_PORT_INCLUDE)
		return true;
	return (pod->flags & SB_POD_OUT_ALL_IPS) || sb_cidr_match(&sb_cidr_incl, cgroup_id, dst);
}

/* Binds the pod's address of the destination's family as the source, so
 * the sidecar sees the pod IP as downstream source, as under REDIRECT. A
 * socket the app bound itself keeps its address. An AF_INET6 socket binds
 * the v4-mapped pod IPv4 for an IPv4 destination. A native IPv6
 * destination under a sidecar whose outbound listener is on ::1 only
 * (sb_cfg.outbound_loopback_only) leaves the socket unbound, so that it
 * connects from ::1 to ::1 (see outbound_listener). */
static __always_inline void bind_pod_ip(struct bpf_sock_addr *ctx, struct sb_pod *pod,
					const struct sb_addr *dst, const bool v6)
{
	struct sb_addr src = {}, peer = {};

	if (!ctx->sk || !sb_sock_addrs(ctx->sk, &src, &peer))
		return;
	if (v6) {
		struct sockaddr_in6 sa = {};

		/* Unbound: :: (and ::ffff:0.0.0.0 never happens before bind). */
		if (!sb_addr_is_zero(&src))
			return;
		sa.sin6_family = SB_AF_INET6;
		if (sb_addr_is4(dst)) {
			if (!pod->ip4)
				return;
			sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0x0000ffff);
			sa.sin6_addr.in6_u.u6_addr32[3] = pod->ip4;
		} else {
			if (sb_addr_is_zero(&pod->ip6) || sb_cfg.outbound_loopback_only)
				return;
			sa.sin6_addr.in6_u.u6_addr32[0] = pod->ip6.w[0];
			sa.sin6_addr.in6_u.u6_addr32[1] = pod->ip6.w[1];
			sa.sin6_addr.in6_u.u6_addr32[2] = pod->ip6.w[2];
			sa.sin6_addr.in6_u.u6_addr32[3] = pod->ip6.w[3];
		}
		if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
			sb_count(SB_STAT_BIND_FAILED);
	} else {
		struct sockaddr_in sa = {};

		if (!pod->ip4 || src.w[3])
			return;
		sa.sin_family = SB_AF_INET;
		sa.sin_addr.s_addr = pod->ip4;
		if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
			sb_count(SB_STAT_BIND_FAILED);
	}
}

/* The loopback address of dst's family: 127.0.0.1 (v4-mapped on an
 * AF_INET6 socket) or ::1. */
static __always_inline void loopback_of(const struct sb_addr *dst, struct sb_addr *to)
{
	if (sb_addr_is4(dst)) {
		sb_addr_set4(to, bpf_htonl(SB_LOCALHOST_IP));
	} else {
		to->w[0] = 0;
		to->w[1] = 0;
		to->w[2] = 0;
		to->w[3] = bpf_htonl(1);
	}
}

/* The sidecar's outbound listener for dst's family, called once the
 * source is bound: 127.0.0.1 (loopback_of) for IPv4; for native IPv6, the
 * pod's own IPv6 address when the socket's source is that address (bound
 * by bind_pod_ip or by the app), else ::1. The connection then has the
 * same address at both ends, pod6 to pod6 or ::1 to ::1, but for an app
 * that bound pod6 itself under a loopback-only listener (a documented
 * limitation). From the pod address to ::1 it does not close cleanly: the
 * app's TIME-WAIT answer to the sidecar's FIN (tcp_v6_send_response) is
 * routed strictly by the interface the FIN came in on, which for a packet
 * to the pod address is the device owning that address, not lo; it has no
 * route (Ip6OutNoRoutes), the sidecar's socket stays in LAST-ACK and a
 * later connection from the same port (tcp_tw_reuse) times out
 * (tests/bench/testdata/ipv6-lastack.sh). The sidecar's wildcard listener
 * (Envoy's and Kuma's [::]:15001) accepts at the pod address; a listener
 * on ::1 only (sb_cfg.outbound_loopback_only, Linkerd) keeps ::1, and
 * bind_pod_ip then leaves the source to the kernel, ::1. */
static __always_inline void outbound_listener(struct bpf_sock_addr *ctx, const struct sb_pod *pod,
					      const struct sb_addr *dst, struct sb_addr *to)
{
	struct sb_addr src = {}, peer = {};

	loopback_of(dst, to);
	if (sb_addr_is4(dst) || sb_cfg.outbound_loopback_only || sb_addr_is_zero(&pod->ip6))
		return;
	if (ctx->sk && sb_sock_addrs(ctx->sk, &src, &peer) && sb_addr_eq(&src, &pod->ip6))
		*to = pod->ip6;
}

/* The DNS branch (bpf/dns.c): a UDP or TCP connect() to port 53 that the
 * pod's DNS capture takes goes to the DNS proxy. True when it has dealt
 * with the connect, false to go on with TCP capture. */
static __always_inline bool dns_connect(struct bpf_sock_addr *ctx, const bool v6);

static __always_inline int redirect(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_addr dst = {}, to = {};
	struct sb_pod *pod;
	__u64 cgroup_id = 0;

	if (dns_connect(ctx, v6))
		return 1;
	if (ctx->type != SB_SOCK_STREAM)
		return 1;
	pod = current_pod(&cgroup_id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE))
		return 1;
	dest_of(ctx, &dst, v6);
	if (is_proxy()) {
		proxy_connect(ctx, &dst, cgroup_id);
		return 1;
	}
	if (!outbound_captured(pod, cgroup_id, &dst, bpf_ntohs((__u16)ctx->user_port)))
		return 1;
	if (remember(ctx, &dst, SB_SOCK_CAPTURED))
		return 1;
	bind_pod_ip(ctx, pod, &dst, v6);
	outbound_listener(ctx, pod, &dst, &to);
	set_dest(ctx, &to, v6);
	ctx->user_port = bpf_htons(sb_cfg.outbound_port);
	sb_count(SB_STAT_CAPTURED);
	if (v6)
		sb_count(sb_addr_is4(&dst) ? SB_STAT_CAPTURED_MAPPED : SB_STAT_CAPTURED_V6);
	return 1;
}

SEC("cgroup/connect4")
int connect4_redirect(struct bpf_sock_addr *ctx)
{
	return redirect(ctx, false);
}

SEC("cgroup/connect6")
int connect6_redirect(struct bpf_sock_addr *ctx)
{
	return redirect(ctx, true);
}

/* getpeername() returns what the app dialled, in the form it dialled it:
 * an AF_INET6 socket that dialled ::ffff:a.b.c.d gets the mapped form. */
static __always_inline int restore_peer(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_sock *s;

	if (!ctx->sk)
		return 1;
	s = bpf_sk_storage_get(&sb_socks, ctx->sk, 0, 0);
	s = sb_sock_or_legacy(s, ctx->sk);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return 1;
	set_dest(ctx, &s->addr, v6);
	ctx->user_port = s->port;
	sb_count(SB_STAT_PEERNAME_RESTORED);
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4_restore(struct bpf_sock_addr *ctx)
{
	return restore_peer(ctx, false);
}

SEC("cgroup/getpeername6")
int getpeername6_restore(struct bpf_sock_addr *ctx)
{
	return restore_peer(ctx, true);
}
