// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * DNS capture: a pod's DNS queries go to its sidecar's DNS proxy (Istio's
 * agent on port 15053) as istio-iptables' --redirect-dns rules send them
 * there, and the replies come back with the source the app asked. Part of
 * the one datapath object: compiled through bpf/datapath.c, not on its own.
 *
 * Which queries: port 53 of one of the pod's nameservers (sb_dns_servers),
 * or of any address when the pod captures all DNS (SB_POD_DNS_ALL,
 * --capture-all-dns), over UDP and TCP, from any process of a captured pod
 * that asks for DNS capture (SB_POD_DNS_CAPTURE), except the proxy's own
 * (uid or gid sb_cfg.proxy_uid/gid) and except when the pod excludes
 * outbound port 53 (ISTIO_OUTPUT's port RETURN rules come first, for UDP
 * as for TCP). Address ranges do not matter: the DNS jump comes before
 * them.
 *
 *   unconnected UDP   cgroup/sendmsg4|6 rewrites each captured datagram's
 *                     destination to 127.0.0.1 (::1, ::ffff:127.0.0.1)
 *                     port sb_cfg.dns_port and remembers the nameserver in
 *                     the socket's storage (sb_socks);
 *   connected UDP     cgroup/connect4|6 (dns_connect, called by connect.c's
 *   and TCP           redirect() before its TCP-only check) does the same
 *                     at connect(); getpeername4|6 then returns the
 *                     nameserver, as for captured TCP;
 *   replies           cgroup/recvmsg4|6 gives a datagram that comes from
 *                     the DNS proxy to a socket whose DNS went there the
 *                     nameserver as its source: resolvers drop replies from
 *                     a source they did not ask.
 *
 * A socket remembers one nameserver, the last it asked: replies to queries
 * sent to two nameservers at once from one unconnected socket all carry the
 * last one's address (a resolver that accepts a reply from any of its
 * nameservers, as musl and glibc do, is content). The state lives in the
 * socket's storage and dies with it; no conntrack entry is made.
 *
 * Kernel: cgroup/sendmsg4 and sendmsg6 4.18, cgroup/recvmsg4 and recvmsg6
 * 5.2, bpf_sk_storage_get from sock_addr programs 5.11; the connect
 * branch needs what connect.c needs.
 */
#include "lib/sockbridge.h"

/* Whether the pod's query to port 53 of dst goes to the DNS proxy. */
static __always_inline bool dns_captured(struct sb_pod *pod, __u64 cgroup_id,
					 const struct sb_addr *dst)
{
	struct sb_dns_key key = {};

	if (!(pod->flags & SB_POD_CAPTURE) || !(pod->flags & SB_POD_DNS_CAPTURE))
		return false;
	if (sb_port_policy(cgroup_id, SB_DNS_PORT, SB_DIR_OUTBOUND) & SB_PORT_EXCLUDE)
		return false;
	if (pod->flags & SB_POD_DNS_ALL)
		return true;
	key.cgroup_id = cgroup_id;
	key.addr = *dst;
	return bpf_map_lookup_elem(&sb_dns_servers, &key) != NULL;
}

/* Stores the nameserver asked in the socket's storage, adding flags. */
static __always_inline bool remember_dns(struct bpf_sock_addr *ctx, const struct sb_addr *dst,
					 __u16 flags)
{
	struct bpf_sock *sk = ctx->sk;
	struct sb_sock *s;

	if (!sk)
		return false;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		sb_count(SB_STAT_STORAGE_FAILED);
		return false;
	}
	s->addr = *dst;
	s->port = bpf_htons(SB_DNS_PORT);
	s->flags |= flags;
	return true;
}

/* A UDP socket connect()ed elsewhere after its DNS was captured: replies
 * to it are no longer the proxy's answers to the app, and its
 * getpeername() is its own again. */
static __always_inline void forget_dns(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sb_sock *s;

	if (!sk)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (s && (s->flags & SB_SOCK_DNS))
		s->flags = 0;
}

/* Sends the socket to the DNS proxy: the loopback address of dst's family
 * (127.0.0.1, mapped on an AF_INET6 socket, or ::1) and sb_cfg.dns_port. */
static __always_inline void to_dns_proxy(struct bpf_sock_addr *ctx, const struct sb_addr *dst,
					 const bool v6)
{
	struct sb_addr to = {};

	loopback_of(dst, &to);
	set_dest(ctx, &to, v6);
	ctx->user_port = bpf_htons(sb_cfg.dns_port);
}

static __always_inline bool dns_connect(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_addr dst = {};
	struct sb_pod *pod;
	__u64 cgroup_id = 0;
	__u32 type = ctx->type;

	if (!sb_cfg.dns_port)
		return false;
	if (type != SB_SOCK_STREAM && (type != SB_SOCK_DGRAM || ctx->protocol != SB_IPPROTO_UDP))
		return false;
	if (ctx->user_port != bpf_htons(SB_DNS_PORT)) {
		if (type == SB_SOCK_DGRAM)
			forget_dns(ctx);
		return false;
	}
	pod = current_pod(&cgroup_id);
	if (!pod)
		return false;
	dest_of(ctx, &dst, v6);
	if (is_proxy()) {
		/* --redirect-dns keeps the proxy's own TCP port 53 to its pod
		 * IP out of ISTIO_IN_REDIRECT ("! --dports 53,15008"). */
		return type == SB_SOCK_STREAM && (pod->flags & SB_POD_CAPTURE) &&
		       (pod->flags & SB_POD_DNS_CAPTURE) && is_own_ip(pod, &dst);
	}
	if (!dns_captured(pod, cgroup_id, &dst)) {
		if (type == SB_SOCK_DGRAM)
			forget_dns(ctx);
		return false;
	}
	if (!remember_dns(ctx, &dst, SB_SOCK_CAPTURED | SB_SOCK_DNS))
		return false;
	to_dns_proxy(ctx, &dst, v6);
	sb_count(SB_STAT_DNS_CONNECTED);
	return true;
}

static __always_inline int dns_sendmsg(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_addr dst = {};
	struct sb_pod *pod;
	__u64 cgroup_id = 0;

	if (!sb_cfg.dns_port || ctx->user_port != bpf_htons(SB_DNS_PORT) ||
	    ctx->protocol != SB_IPPROTO_UDP)
		return 1;
	pod = current_pod(&cgroup_id);
	if (!pod || is_proxy())
		return 1;
	dest_of(ctx, &dst, v6);
	if (!dns_captured(pod, cgroup_id, &dst) || !remember_dns(ctx, &dst, SB_SOCK_DNS))
		return 1;
	to_dns_proxy(ctx, &dst, v6);
	sb_count(SB_STAT_DNS_CAPTURED);
	return 1;
}

SEC("cgroup/sendmsg4")
int sendmsg4_redirect(struct bpf_sock_addr *ctx)
{
	return dns_sendmsg(ctx, false);
}

SEC("cgroup/sendmsg6")
int sendmsg6_redirect(struct bpf_sock_addr *ctx)
{
	return dns_sendmsg(ctx, true);
}

/* A datagram from the DNS proxy to a socket whose DNS went there gets the
 * nameserver as its source, in the socket's own form (v4-mapped on an
 * AF_INET6 socket that asked an IPv4 nameserver). */
static __always_inline int dns_recvmsg(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_addr src = {}, proxy = {};
	struct bpf_sock *sk = ctx->sk;
	struct sb_sock *s;

	if (!sb_cfg.dns_port || ctx->user_port != bpf_htons(sb_cfg.dns_port) || !sk)
		return 1;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & SB_SOCK_DNS))
		return 1;
	dest_of(ctx, &src, v6);
	loopback_of(&s->addr, &proxy);
	if (!sb_addr_eq(&src, &proxy))
		return 1;
	set_dest(ctx, &s->addr, v6);
	ctx->user_port = s->port;
	sb_count(SB_STAT_DNS_RESTORED);
	return 1;
}

SEC("cgroup/recvmsg4")
int recvmsg4_restore(struct bpf_sock_addr *ctx)
{
	return dns_recvmsg(ctx, false);
}

SEC("cgroup/recvmsg6")
int recvmsg6_restore(struct bpf_sock_addr *ctx)
{
	return dns_recvmsg(ctx, true);
}
