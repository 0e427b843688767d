// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_lookup: inbound capture without NAT. Attached with a bpf_link to each
 * captured pod's network namespace, it runs when a TCP SYN for the pod
 * looks for a listening socket, from any source (another node, the host,
 * an unmeshed pod, a sidecar on this node), and hands a connection to a
 * captured port of the pod's address to the sidecar's inbound listener
 * (sb_cfg.inbound_port, Istio's 15006) with bpf_sk_assign. Nothing is
 * rewritten: the accepted socket's local address is the original
 * destination, which getsockopt(SO_ORIGINAL_DST) then returns (sockopt.c)
 * for REDIRECT-mode sidecars, and getsockname() for TPROXY-mode ones. Part
 * of the one datapath object: compiled through bpf/datapath.c.
 *
 * Left alone, as istio-iptables' ISTIO_INBOUND chain leaves them: UDP, the
 * never-captured ports (15008, 15020, 15021, 15090), excluded ports, ports
 * not included, the sidecar's own listening ports, Envoy's inbound
 * passthrough (from 127.0.0.6 or ::6), and the pod's connections to its own
 * address (local traffic is not redirected in PREROUTING).
 *
 * Fails closed: a captured connection whose sidecar is not listening (not
 * yet, or no more) gets SK_DROP, which TCP answers with a reset, exactly
 * as REDIRECT to a closed port would; it is never delivered to the app.
 *
 * The bind guard below closes the window between a pod's sandbox and its
 * inbound capture.
 *
 * Kernel: sk_lookup 5.9, listening sockets in a sockhash 5.7,
 * bpf_sk_assign from sk_lookup 5.9.
 */
#include "lib/sockbridge.h"

#define SB_IPPROTO_TCP 6

/* The lookup's addresses in the sb_addr form. */
static __always_inline bool lookup_addrs(struct bpf_sk_lookup *ctx, struct sb_addr *local,
					 struct sb_addr *remote)
{
	__u32 family = ctx->family;

	if (family == SB_AF_INET) {
		sb_addr_set4(local, SB_LOAD_U32(ctx, local_ip4));
		sb_addr_set4(remote, SB_LOAD_U32(ctx, remote_ip4));
		return true;
	}
	if (family == SB_AF_INET6) {
		SB_LOAD_ADDR6(local, ctx, local_ip6);
		SB_LOAD_ADDR6(remote, ctx, remote_ip6);
		return true;
	}
	return false;
}

SEC("sk_lookup")
int sklookup_inbound(struct bpf_sk_lookup *ctx)
{
	struct sb_listener_key key = {};
	struct sb_addr local = {}, remote = {};
	struct bpf_sock *sk;
	__u64 cgroup_id = 0;
	__u64 *netns;
	long err;

	if (ctx->protocol != SB_IPPROTO_TCP || !lookup_addrs(ctx, &local, &remote))
		return SK_PASS;
	if (!sb_inbound_pod(&local, (__u16)ctx->local_port, &remote, &cgroup_id))
		return SK_PASS;
	netns = bpf_map_lookup_elem(&sb_pod_netns, &cgroup_id);
	if (!netns) {
		/* Attached to this namespace but the pod's entry is gone or
		 * not yet written: refuse rather than reach the app. */
		sb_count(SB_STAT_INBOUND_REFUSED);
		return SK_DROP;
	}
	key.netns = *netns;
	key.family = ctx->family == SB_AF_INET ? 4 : 6;
	sk = bpf_map_lookup_elem(&sb_listeners, &key);
	if (!sk && key.family == 4) {
		/* A dual-stack AF_INET6 listener takes IPv4 too; a v6-only
		 * one makes bpf_sk_assign fail below. */
		key.family = 6;
		sk = bpf_map_lookup_elem(&sb_listeners, &key);
	}
	if (!sk) {
		sb_count(SB_STAT_INBOUND_REFUSED);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		sb_count(SB_STAT_INBOUND_REFUSED);
		return SK_DROP;
	}
	sb_count(SB_STAT_INBOUND_REDIRECTED);
	return SK_PASS;
}

/* Closes the window between a pod's sandbox and its inbound capture: an
 * app of a captured pod may not bind a port inbound capture would take
 * until the agent has attached sk_lookup to the namespace the app is in
 * (sb_pod_netns holds that namespace's cookie). bind(2) fails with EPERM
 * meanwhile; the app retries or is restarted, and never listens where a
 * connection could reach it past its sidecar. The sidecar (proxy uid or
 * gid), loopback addresses, port 0 and UDP are never refused, and neither
 * are the datapath's own bpf_bind calls, which skip this hook.
 *
 * Kernel: cgroup/bind4 and bind6 4.17, bpf_get_netns_cookie from sock_addr
 * programs 5.7. */
static __always_inline int bind_guard(struct bpf_sock_addr *ctx, const bool v6)
{
	struct sb_addr addr = {};
	struct sb_pod *pod;
	__u64 cgroup_id = 0;
	__u64 *netns;
	__u16 port;

	if (ctx->type != SB_SOCK_STREAM)
		return 1;
	port = bpf_ntohs((__u16)ctx->user_port);
	if (!port)
		return 1;
	if (v6)
		SB_LOAD_ADDR6(&addr, ctx, user_ip6);
	else
		sb_addr_set4(&addr, SB_LOAD_U32(ctx, user_ip4));
	if (sb_addr_is_loopback(&addr) || sb_addr_is_passthrough(&addr))
		return 1;
	pod = current_pod(&cgroup_id);
	if (!pod || !(pod->flags & SB_POD_CAPTURE) || is_proxy())
		return 1;
	if (port == sb_cfg.inbound_port || port == sb_cfg.outbound_port ||
	    !sb_inbound_captured(pod, cgroup_id, port))
		return 1;
	netns = bpf_map_lookup_elem(&sb_pod_netns, &cgroup_id);
	if (netns && *netns == bpf_get_netns_cookie(ctx))
		return 1;
	sb_count(SB_STAT_BIND_REFUSED);
	return 0;
}

SEC("cgroup/bind4")
int bind4_guard(struct bpf_sock_addr *ctx)
{
	return bind_guard(ctx, false);
}

SEC("cgroup/bind6")
int bind6_guard(struct bpf_sock_addr *ctx)
{
	return bind_guard(ctx, true);
}
