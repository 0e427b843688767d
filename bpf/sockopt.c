// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getsockopt: answers SO_ORIGINAL_DST on sockets a sidecar accepted
 * from a captured connection, as the conntrack-backed answer under iptables
 * or ip6tables REDIRECT would: getsockopt(SOL_IP, SO_ORIGINAL_DST) with a
 * sockaddr_in when the original destination is IPv4 (also on an AF_INET6
 * socket carrying IPv4), getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) with a
 * sockaddr_in6 when it is IPv6. Asked at the other family's level, the call
 * keeps the kernel's answer, as it would under REDIRECT (the conntrack entry
 * is of the connection's own family). Part of the one datapath object:
 * compiled through bpf/datapath.c, not on its own.
 *
 * Every other call is left exactly as the kernel answered it: the program
 * does not touch optlen, so large buffers (optlen > PAGE_SIZE) pass through
 * unchanged.
 *
 * Connections inbound capture (sklookup.c) handed to the sidecar were not
 * rewritten; for them the answer is the accepted socket's own address.
 *
 * Kernel: cgroup/getsockopt 5.3, bpf_sk_storage_get from sockopt 5.3,
 * bpf_get_netns_cookie from sockopt 5.8.
 */
#include "lib/sockbridge.h"

#define SB_SOL_IP 0
#define SB_SOL_IPV6 41
#define SB_SO_ORIGINAL_DST 80 /* also IP6T_SO_ORIGINAL_DST */

/* Fallback for a child socket whose PASSIVE_ESTABLISHED ran before the
 * client published the tuple (not seen on loopback, kept for safety). */
static __always_inline struct sb_sock *tuple_lookup(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct sb_tuple key = {};

	if (!sb_sock_addrs(sk, &key.server, &key.client))
		return NULL;
	key.client_port = bpf_ntohs((__u16)sk->dst_port);
	key.server_port = (__u16)sk->src_port;
	if (sb_needs_netns(&key.client, &key.server))
		key.netns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&sb_tuples, &key);
}

/* A connection inbound capture handed to the sidecar (sklookup.c) was not
 * rewritten: its original destination is the accepted socket's own
 * address, as TPROXY's contract has it. Fills orig with it when sk is such
 * a socket: a captured port of a pod whose inbound capture is attached. */
static __always_inline bool inbound_origdst(struct bpf_sock *sk, struct sb_sock *orig)
{
	struct sb_addr remote = {};
	__u16 port = (__u16)sk->src_port;
	__u64 cgroup_id = 0;

	if (!sb_sock_addrs(sk, &orig->addr, &remote))
		return false;
	if (!sb_inbound_pod(&orig->addr, port, &remote, &cgroup_id))
		return false;
	if (!bpf_map_lookup_elem(&sb_pod_netns, &cgroup_id))
		return false;
	orig->port = bpf_htons(port);
	sb_count(SB_STAT_ORIGDST_INBOUND);
	return true;
}

SEC("cgroup/getsockopt")
int getsockopt_origdst(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sb_sock inbound = {};
	struct sb_sock *s;

	if (ctx->optname != SB_SO_ORIGINAL_DST || !sk)
		return 1;
	if (ctx->level != SB_SOL_IP && ctx->level != SB_SOL_IPV6)
		return 1;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	s = sb_sock_or_legacy(s, sk);
	if (!s || !(s->flags & SB_SOCK_ORIGDST))
		s = tuple_lookup(ctx, sk);
	if (!s && inbound_origdst(sk, &inbound))
		s = &inbound;
	if (!s) {
		sb_count(SB_STAT_ORIGDST_UNKNOWN);
		return 1;
	}
	/* The stores below follow the kernel selftest sockopt_sk.c's order:
	 * retval, optval, optlen. Kept apart by the optval stores, the two
	 * 4-byte context stores are not merged by clang into one 8-byte store
	 * (which the verifier rejects for the context), so no compiler barrier
	 * is needed. */
	if (sb_addr_is4(&s->addr) != (ctx->level == SB_SOL_IP)) {
		sb_count(SB_STAT_ORIGDST_FAMILY);
		return 1;
	}
	if (ctx->level == SB_SOL_IP) {
		struct sockaddr_in *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1; /* buffer too small: keep the kernel's answer */
		ctx->retval = 0;
		sa->sin_family = SB_AF_INET;
		sa->sin_port = s->port;
		sa->sin_addr.s_addr = s->addr.w[3];
		__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		ctx->retval = 0;
		sa->sin6_family = SB_AF_INET6;
		sa->sin6_port = s->port;
		sa->sin6_flowinfo = 0;
		sa->sin6_addr.in6_u.u6_addr32[0] = s->addr.w[0];
		sa->sin6_addr.in6_u.u6_addr32[1] = s->addr.w[1];
		sa->sin6_addr.in6_u.u6_addr32[2] = s->addr.w[2];
		sa->sin6_addr.in6_u.u6_addr32[3] = s->addr.w[3];
		sa->sin6_scope_id = 0;
		ctx->optlen = sizeof(*sa);
	}
	sb_count(SB_STAT_ORIGDST_ANSWERED);
	return 1;
}
