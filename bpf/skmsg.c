// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_msg: splices the bytes of a captured flow straight into the peer
 * socket's receive queue (bpf_msg_redirect_hash with BPF_F_INGRESS), so
 * they skip the loopback TCP/IP stack. Only the two sidecars' sockets of a
 * same-node connection are in the sockhash (sockops.c says why). Part of
 * the one datapath object: compiled through bpf/datapath.c, not on its
 * own. A message whose peer is not (yet) in sb_sockhash goes the normal TCP
 * way, and so does every later message of that socket. Both families: the
 * peer's key is built in the sb_addr form, as sockops built it.
 *
 * Hazard: redirected bytes bypass the receiver's TCP receive queue, so
 * splice(2) on the receiving socket never sees them; a proxy that splices
 * (Go's io.Copy between TCP conns, HAProxy's splice-* options) stalls.
 * Splicing is therefore a switch in the agent. For the same reason a
 * socket closed with redirected bytes unread sends FIN, not the RST that
 * unread TCP bytes cause (docs/splice.md, hazard 6).
 *
 * Kernel: sk_msg and sockhash 4.18, bpf_get_netns_cookie from sk_msg 5.15,
 * sk_msg_md.sk and bpf_sk_storage_get from sk_msg 5.8.
 */
#include "lib/sockbridge.h"

SEC("sk_msg")
int skmsg_splice(struct sk_msg_md *msg)
{
	struct sb_sock_key peer = {};
	__u32 family = msg->family;
	struct bpf_sock *sk = msg->sk;
	struct sb_sock *s = NULL;

	if (family == SB_AF_INET) {
		sb_addr_set4(&peer.local, SB_LOAD_U32(msg, remote_ip4));
		sb_addr_set4(&peer.remote, SB_LOAD_U32(msg, local_ip4));
	} else if (family == SB_AF_INET6) {
		SB_LOAD_ADDR6(&peer.local, msg, remote_ip6);
		SB_LOAD_ADDR6(&peer.remote, msg, local_ip6);
	} else {
		return SK_PASS;
	}
	/* A socket whose bytes once took TCP stays on TCP: bytes spliced
	 * later would reach the peer's ingress queue, which the kernel reads
	 * before the TCP bytes still queued ahead of them (tcp_bpf_recvmsg).
	 * That happens when this socket writes before its peer has joined
	 * (the peer's PASSIVE_ESTABLISHED runs when the handshake's last ACK
	 * arrives, which on the shortcut crosses a veth): 1 connection of
	 * 3011 in TestSpliceCorrectness. */
	if (sk)
		s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (s && (s->flags & SB_SOCK_TCP_ONLY)) {
		sb_count(SB_STAT_SPLICE_PASSED);
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
	/* No peer: the helper redirected nothing, the message takes TCP,
	 * and so does every later one. */
	if (s) {
		s->flags |= SB_SOCK_TCP_ONLY;
		sb_count(SB_STAT_SPLICE_TCP_ONLY);
	}
	sb_count(SB_STAT_SPLICE_PASSED);
	return SK_PASS;
}
