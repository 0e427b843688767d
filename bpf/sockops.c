// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops: carries a captured connection's original destination from the
 * connecting socket to the socket the sidecar accepts. Part of the one
 * datapath object: compiled through bpf/datapath.c, not on its own.
 *
 * The client's TCP_CONNECT_CB callback runs before it sends its SYN, so
 * before the listener creates the child socket and runs
 * PASSIVE_ESTABLISHED (at the final ACK, or at the SYN itself for a TCP
 * Fast Open child): the client publishes the destination in sb_tuples, the
 * child moves it into its own socket storage and deletes the entry. An entry
 * whose child never appears is deleted when the client socket closes. No
 * per-connection state outlives its sockets.
 *
 * With splicing on (the sockops_splice entry point), it also adds to
 * sb_sockhash both sockets of every sidecar to sidecar connection on this
 * node (the same-node shortcut). Nothing else: no socket an application
 * owns (see active_established).
 *
 * Kernel: sockops 4.13, bpf_sk_storage_get from sockops 5.3,
 * bpf_get_netns_cookie from sockops 5.15, BPF_SOCK_OPS_STATE_CB 4.17,
 * bpf_sock_hash_update 4.18.
 */
#include <linux/tcp.h>

#include "lib/sockbridge.h"

#define TCP_CLOSE 7

/* Adds the socket to sb_sockhash when splice is true. splice is a
 * compile-time constant of each entry point (sockops_track,
 * sockops_splice): without splicing the program does not reference
 * sb_sockhash at all, so the agent can leave the map uncreated. */
static __always_inline void splice_add(struct bpf_sock_ops *skops, const bool splice)
{
	struct sb_sock_key key = {
		.local_ip4 = skops->local_ip4,
		.remote_ip4 = skops->remote_ip4,
		.local_port = (__u16)skops->local_port,
		.remote_port = (__u16)bpf_ntohl(skops->remote_port),
	};

	if (!splice)
		return;
	if (sb_needs_netns(key.local_ip4, key.remote_ip4))
		key.netns = bpf_get_netns_cookie(skops);
	if (bpf_sock_hash_update(skops, &sb_sockhash, &key, BPF_ANY)) {
		sb_count(SB_STAT_SPLICE_ADD_FAILED);
		return;
	}
	sb_count(SB_STAT_SPLICE_ADDED);
}

/* A connection whose first bytes travel over TCP is never spliced. The
 * kernel reads a socket in the sockhash through tcp_bpf_recvmsg, which
 * hands out what sk_msg queued (the ingress_msg list) before the TCP
 * receive queue: bytes spliced later overtake TCP bytes not yet read.
 * TCP Fast Open sends the first bytes over TCP before or while the
 * sockets join: data in the SYN (the listener's child is created with it
 * queued, the client counts it in data_segs_out), or, for a blocking
 * sendto(MSG_FASTOPEN) or TCP_FASTOPEN_CONNECT client without a usable
 * cookie, the rest of the same sendmsg, which continues over TCP after
 * the client's ACTIVE_ESTABLISHED and carries the handshake's last ACK
 * (TestSpliceMatrix: the sidecar got a later write's bytes first, 19
 * connections of 20). */

/* Whether the segment that established a passive socket (the last ACK of
 * the handshake, or a Fast Open SYN) carried payload. When the header
 * cannot be read, the answer is yes: not spliced. */
static __always_inline bool established_with_data(struct bpf_sock_ops *skops)
{
	struct tcphdr *th = (void *)(long)skops->skb_data;

	if ((void *)(th + 1) > (void *)(long)skops->skb_data_end)
		return true;
	return skops->skb_len > (__u32)th->doff * 4;
}

/* Takes the client of a passive socket out of sb_sockhash: it joined at its
 * ACTIVE_ESTABLISHED, before its bytes showed that the connection must
 * not be spliced. */
static __always_inline void splice_drop_client(struct bpf_sock_ops *skops, const bool splice)
{
	struct sb_sock_key key = {
		.local_ip4 = skops->remote_ip4,
		.remote_ip4 = skops->local_ip4,
		.local_port = (__u16)bpf_ntohl(skops->remote_port),
		.remote_port = (__u16)skops->local_port,
	};

	if (!splice)
		return;
	if (sb_needs_netns(key.local_ip4, key.remote_ip4))
		key.netns = bpf_get_netns_cookie(skops);
	bpf_map_delete_elem(&sb_sockhash, &key);
}

/* The key is the connection as the client sees it; the netns cookie keeps
 * apart pods whose loopback 4-tuples are identical. */
static __always_inline void tuple_key(struct bpf_sock_ops *skops, struct sb_tuple *key, int passive)
{
	__u32 local_ip4 = skops->local_ip4;
	__u32 remote_ip4 = skops->remote_ip4;
	__u16 local_port = (__u16)skops->local_port;
	__u16 remote_port = (__u16)bpf_ntohl(skops->remote_port);

	if (passive) {
		key->client_ip4 = remote_ip4;
		key->client_port = remote_port;
		key->server_ip4 = local_ip4;
		key->server_port = local_port;
	} else {
		key->client_ip4 = local_ip4;
		key->client_port = local_port;
		key->server_ip4 = remote_ip4;
		key->server_port = remote_port;
	}
	key->netns = sb_is_loopback(key->server_ip4) ? bpf_get_netns_cookie(skops) : 0;
	key->pad = 0;
}

/* The client publishes its original destination when it sends its SYN
 * (TCP_CONNECT_CB, which runs with the source port chosen), not at
 * ACTIVE_ESTABLISHED: a TCP Fast Open listener creates the child, and runs
 * its PASSIVE_ESTABLISHED, as soon as a SYN carrying data arrives, before
 * the client has seen the SYN-ACK; the sidecar could accept it and ask for
 * SO_ORIGINAL_DST before the client published (HAProxy then rejects the
 * connection). The state callback removes the entry if no child ever
 * takes it. */
static __always_inline void connecting(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct sb_tuple key;
	struct sb_sock *s;

	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return;
	tuple_key(skops, &key, 0);
	if (bpf_map_update_elem(&sb_tuples, &key, s, BPF_ANY)) {
		sb_count(SB_STAT_TUPLE_FAILED);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Only a sidecar's connection to another pod's sidecar on this node (the
 * shortcut, SB_SOCK_SHORTCUT) is spliced, never a socket an application
 * owns (the app's captured socket, the sidecar's socket accepted from it,
 * the inbound passthrough to the app). Every socket in the sockhash is
 * read through tcp_bpf_recvmsg, which returns EAGAIN from a blocking recv
 * whenever its wait ends without data (a write-space wake-up, long before
 * SO_RCVTIMEO), and returns what is queued whatever MSG_WAITALL asks
 * (TestSpliceMatrix: blocking read, recv(MSG_PEEK) and recv(MSG_WAITALL)
 * got EAGAIN within 2 ms on 6.18; the upstream code is the same). An
 * application may read in those ways; a sidecar reads non-blocking from an
 * event loop, where EAGAIN is expected. */
static __always_inline void active_established(struct bpf_sock_ops *skops, struct bpf_sock *sk,
					       const bool splice)
{
	struct sb_sock *s;

	if (!splice)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & SB_SOCK_SHORTCUT))
		return;
	if (skops->data_segs_out) {
		/* Fast Open data in the SYN (see established_with_data). */
		sb_count(SB_STAT_SPLICE_SKIPPED);
		return;
	}
	splice_add(skops, splice);
}

static __always_inline void passive_established(struct bpf_sock_ops *skops, struct bpf_sock *sk,
						const bool splice)
{
	struct sb_tuple key;
	struct sb_sock *orig, *s;
	bool shortcut;

	tuple_key(skops, &key, 1);
	orig = bpf_map_lookup_elem(&sb_tuples, &key);
	if (!orig)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		/* Leave the entry: getsockopt falls back to sb_tuples and the
		 * client's close removes it. */
		sb_count(SB_STAT_STORAGE_FAILED);
		return;
	}
	s->ip4 = orig->ip4;
	s->port = orig->port;
	s->flags = SB_SOCK_ORIGDST;
	/* Only a sidecar's shortcut connection (see active_established). */
	shortcut = orig->flags & SB_SOCK_SHORTCUT;
	bpf_map_delete_elem(&sb_tuples, &key);
	if (!shortcut)
		return;
	if (splice && established_with_data(skops)) {
		splice_drop_client(skops, splice);
		sb_count(SB_STAT_SPLICE_SKIPPED);
		return;
	}
	splice_add(skops, splice);
}

static __always_inline void state_changed(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct sb_tuple key;
	struct sb_sock *s;

	if (skops->args[1] != TCP_CLOSE)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return;
	tuple_key(skops, &key, 0);
	bpf_map_delete_elem(&sb_tuples, &key);
}

static __always_inline int track(struct bpf_sock_ops *skops, const bool splice)
{
	struct bpf_sock *sk = skops->sk;

	if (skops->family != SB_AF_INET || !sk)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		connecting(skops, sk);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		active_established(skops, sk, splice);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive_established(skops, sk, splice);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		state_changed(skops, sk);
		break;
	}
	return 1;
}

/* The sockops program with splicing off: it never touches sb_sockhash. */
SEC("sockops")
int sockops_track(struct bpf_sock_ops *skops)
{
	return track(skops, false);
}

/* The sockops program with splicing on: also adds captured flows' sockets
 * to sb_sockhash, whose sk_msg program (skmsg_splice) moves their bytes. */
SEC("sockops")
int sockops_splice(struct bpf_sock_ops *skops)
{
	return track(skops, true);
}
