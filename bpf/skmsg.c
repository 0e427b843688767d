// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_msg: splices the bytes of a captured flow straight into the peer
 * socket's receive queue (bpf_msg_redirect_hash with BPF_F_INGRESS), so
 * app <-> sidecar traffic skips the loopback TCP/IP stack. Part of the one
 * datapath object: compiled through bpf/datapath.c, not on its own. A
 * message whose peer is not (yet) in sb_sockhash goes the normal TCP way.
 * Both families: the peer's key is built in the sb_addr form, as sockops
 * built it.
 *
 * Hazard: redirected bytes bypass the receiver's TCP receive queue, so
 * splice(2) on the receiving socket never sees them; a proxy that splices
 * (Go's io.Copy between TCP conns, HAProxy's splice-* options) stalls.
 * Splicing is therefore a switch in the agent.
 *
 * Kernel: sk_msg and sockhash 4.18, bpf_get_netns_cookie from sk_msg 5.15.
 */
#include "lib/sockbridge.h"

SEC("sk_msg")
int skmsg_splice(struct sk_msg_md *msg)
{
	struct sb_sock_key peer = {};
	__u32 family = msg->family;

	if (family == SB_AF_INET) {
		sb_addr_set4(&peer.local, SB_LOAD_U32(msg, remote_ip4));
		sb_addr_set4(&peer.remote, SB_LOAD_U32(msg, local_ip4));
	} else if (family == SB_AF_INET6) {
		SB_LOAD_ADDR6(&peer.local, msg, remote_ip6);
		SB_LOAD_ADDR6(&peer.remote, msg, local_ip6);
	} else {
		return SK_PASS;
	}
	peer.local_port = (__u16)bpf_ntohl(msg->remote_port);
	peer.remote_port = (__u16)msg->local_port;
	if (sb_needs_netns(&peer.local, &peer.remote))
		peer.netns = bpf_get_netns_cookie(msg);
	if (bpf_msg_redirect_hash(msg, &sb_sockhash, &peer, BPF_F_INGRESS) == SK_PASS) {
		sb_count(SB_STAT_SPLICE_REDIRECTED);
		return SK_PASS;
	}
	/* No peer: the helper redirected nothing, the message takes TCP. */
	sb_count(SB_STAT_SPLICE_PASSED);
	return SK_PASS;
}
