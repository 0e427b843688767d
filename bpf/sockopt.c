// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) on sockets a
 * sidecar accepted from a captured connection, as the conntrack-backed
 * answer under iptables REDIRECT would. Part of the one datapath object:
 * compiled through bpf/datapath.c, not on its own. Every other call is left exactly as
 * the kernel answered it: the program does not touch optlen, so large
 * buffers (optlen > PAGE_SIZE) pass through unchanged.
 *
 * Kernel: cgroup/getsockopt 5.3, bpf_sk_storage_get from sockopt 5.3,
 * bpf_get_netns_cookie from sockopt 5.8.
 */
#include "lib/sockbridge.h"

#define SB_SOL_IP 0
#define SB_SO_ORIGINAL_DST 80

/* Fallback for a child socket whose PASSIVE_ESTABLISHED ran before the
 * client published the tuple (not seen on loopback, kept for safety). */
static __always_inline struct sb_sock *tuple_lookup(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct sb_tuple key = {
		.client_ip4 = sk->dst_ip4,
		.client_port = bpf_ntohs((__u16)sk->dst_port),
		.server_ip4 = sk->src_ip4,
		.server_port = (__u16)sk->src_port,
	};

	key.netns = sb_is_loopback(key.server_ip4) ? bpf_get_netns_cookie(ctx) : 0;
	return bpf_map_lookup_elem(&sb_tuples, &key);
}

SEC("cgroup/getsockopt")
int getsockopt_origdst(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sockaddr_in *sa;
	struct sb_sock *s;

	if (ctx->level != SB_SOL_IP || ctx->optname != SB_SO_ORIGINAL_DST || !sk)
		return 1;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & SB_SOCK_ORIGDST))
		s = tuple_lookup(ctx, sk);
	if (!s) {
		sb_count(SB_STAT_ORIGDST_UNKNOWN);
		return 1;
	}
	sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1; /* buffer too small: keep the kernel's answer */
	sa->sin_family = SB_AF_INET;
	sa->sin_port = s->port;
	sa->sin_addr.s_addr = s->ip4;
	__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
	ctx->optlen = sizeof(*sa);
	/* clang would merge the two stores into one 8-byte store the verifier
	 * rejects for the context. */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	sb_count(SB_STAT_ORIGDST_ANSWERED);
	return 1;
}
