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
 * Both families: addresses are read in the sb_addr form (IPv4 v4-mapped), so
 * an app's AF_INET6 socket dialling ::ffff:127.0.0.1 and the sidecar's
 * AF_INET socket accepting that connection agree on the key.
 *
 * With splicing on (sockops_splice, sockops_full), it also adds to
 * sb_sockhash both sockets of every sidecar to sidecar connection on this
 * node (the same-node shortcut). Nothing else: no socket an application
 * owns (see active_established). With inbound capture on (sockops_listen,
 * sockops_full), it adds the sidecars' inbound listeners to sb_listeners for
 * sk_lookup (sklookup.c).
 *
 * Kernel: sockops 4.13, bpf_sk_storage_get from sockops 5.3,
 * bpf_get_netns_cookie from sockops 5.15, BPF_SOCK_OPS_STATE_CB 4.17,
 * bpf_sock_hash_update 4.18, listening sockets in a sockhash from
 * BPF_SOCK_OPS_TCP_LISTEN_CB 5.7, skb_data in sockops 5.10.
 */
#include <linux/tcp.h>

#include "lib/sockbridge.h"

#define TCP_CLOSE 7

/* A sockops socket's local and remote addresses in the sb_addr form;
 * false for a family other than AF_INET and AF_INET6. An AF_INET6 socket
 * carrying IPv4 takes its local address from the IPv4 field: at
 * TCP_CONNECT_CB, which tcp_v4_connect runs on behalf of a v4-mapped
 * connect, the socket's IPv6 view of its source is not written yet (an
 * unbound socket still says ::). */
static __always_inline bool ops_addrs(struct bpf_sock_ops *skops, struct sb_addr *local,
				      struct sb_addr *remote)
{
	__u32 family = skops->family;

	if (family == SB_AF_INET) {
		sb_addr_set4(local, SB_LOAD_U32(skops, local_ip4));
		sb_addr_set4(remote, SB_LOAD_U32(skops, remote_ip4));
		return true;
	}
	if (family == SB_AF_INET6) {
		SB_LOAD_ADDR6(remote, skops, remote_ip6);
		if (sb_addr_is4(remote))
			sb_addr_set4(local, SB_LOAD_U32(skops, local_ip4));
		else
			SB_LOAD_ADDR6(local, skops, local_ip6);
		return true;
	}
	return false;
}

/* A socket's view of its connection: addresses, and ports in host order. */
struct ends {
	struct sb_addr local;
	struct sb_addr remote;
	__u16 local_port;
	__u16 remote_port;
};

/* The sockhash key of the socket with these ends. */
static __always_inline void sock_key(struct bpf_sock_ops *skops, const struct sb_addr *local,
				     const struct sb_addr *remote, __u16 local_port,
				     __u16 remote_port, struct sb_sock_key *key)
{
	key->local = *local;
	key->remote = *remote;
	key->local_port = local_port;
	key->remote_port = remote_port;
	if (sb_needs_netns(&key->local, &key->remote))
		key->netns = bpf_get_netns_cookie(skops);
}

/* Adds the socket to sb_sockhash when splice is true. splice is a
 * compile-time constant of each entry point: without splicing the program
 * does not reference sb_sockhash at all, so the agent can leave the map
 * uncreated. */
static __always_inline void splice_add(struct bpf_sock_ops *skops, const struct ends *e,
				       const bool splice)
{
	struct sb_sock_key key = {};

	if (!splice)
		return;
	sock_key(skops, &e->local, &e->remote, e->local_port, e->remote_port, &key);
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
static __always_inline void splice_drop_client(struct bpf_sock_ops *skops, const struct ends *e,
					       const bool splice)
{
	struct sb_sock_key key = {};

	if (!splice)
		return;
	sock_key(skops, &e->remote, &e->local, e->remote_port, e->local_port, &key);
	bpf_map_delete_elem(&sb_sockhash, &key);
}

/* The key is the connection as the client sees it; the netns cookie keeps
 * apart pods whose loopback 4-tuples are identical. */
static __always_inline void tuple_key(struct bpf_sock_ops *skops, const struct ends *e,
				      struct sb_tuple *key, const bool passive)
{
	if (passive) {
		key->client = e->remote;
		key->client_port = e->remote_port;
		key->server = e->local;
		key->server_port = e->local_port;
	} else {
		key->client = e->local;
		key->client_port = e->local_port;
		key->server = e->remote;
		key->server_port = e->remote_port;
	}
	key->netns = sb_needs_netns(&key->client, &key->server) ? bpf_get_netns_cookie(skops) : 0;
}

/* The client publishes its original destination when it sends its SYN
 * (TCP_CONNECT_CB, which runs with the source port chosen), not at
 * ACTIVE_ESTABLISHED: a TCP Fast Open listener creates the child, and runs
 * its PASSIVE_ESTABLISHED, as soon as a SYN carrying data arrives, before
 * the client has seen the SYN-ACK; the sidecar could accept it and ask for
 * SO_ORIGINAL_DST before the client published (HAProxy then rejects the
 * connection). The state callback removes the entry if no child ever
 * takes it. */
static __always_inline void connecting(struct bpf_sock_ops *skops, struct bpf_sock *sk,
				       const struct ends *e)
{
	struct sb_tuple key = {};
	struct sb_sock *s;

	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	s = sb_sock_or_legacy(s, sk);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return;
	tuple_key(skops, e, &key, false);
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
					       const struct ends *e, const bool splice)
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
	splice_add(skops, e, splice);
}

static __always_inline void passive_established(struct bpf_sock_ops *skops, struct bpf_sock *sk,
						const struct ends *e, const bool splice)
{
	struct sb_tuple key = {};
	struct sb_sock *orig, *s;
	struct sb_sock legacy; /* bpf/legacy.c */
	bool shortcut;

	tuple_key(skops, e, &key, true);
	orig = bpf_map_lookup_elem(&sb_tuples, &key);
	orig = sb_tuple_or_legacy(orig, &key, &legacy);
	if (!orig)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		/* Leave the entry: getsockopt falls back to sb_tuples and the
		 * client's close removes it. */
		sb_count(SB_STAT_STORAGE_FAILED);
		return;
	}
	s->addr = orig->addr;
	s->port = orig->port;
	s->flags = SB_SOCK_ORIGDST;
	/* Only a sidecar's shortcut connection (see active_established). */
	shortcut = orig->flags & SB_SOCK_SHORTCUT;
	bpf_map_delete_elem(&sb_tuples, &key);
	if (!shortcut || !splice)
		return;
	if (established_with_data(skops)) {
		splice_drop_client(skops, e, splice);
		sb_count(SB_STAT_SPLICE_SKIPPED);
		return;
	}
	splice_add(skops, e, splice);
}

static __always_inline void state_changed(struct bpf_sock_ops *skops, struct bpf_sock *sk,
					  const struct ends *e)
{
	struct sb_tuple key = {};
	struct sb_sock *s;

	if (skops->args[1] != TCP_CLOSE)
		return;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, 0);
	if (!s || !(s->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return;
	tuple_key(skops, e, &key, false);
	bpf_map_delete_elem(&sb_tuples, &key);
}

/* With inbound capture on, the sidecar's inbound listeners (port
 * sb_cfg.inbound_port in a pod's network namespace) enter sb_listeners
 * when they listen, where the namespace's sk_lookup program finds them.
 * TCP_LISTEN_CB fires on every listen(2), with no callback flag. */
static __always_inline void listen_cb(struct bpf_sock_ops *skops)
{
	struct sb_listener_key key = {};
	__u32 family = skops->family;

	if ((__u16)skops->local_port != sb_cfg.inbound_port)
		return;
	if (family != SB_AF_INET && family != SB_AF_INET6)
		return;
	key.netns = bpf_get_netns_cookie(skops);
	key.family = family == SB_AF_INET ? 4 : 6;
	if (bpf_sock_hash_update(skops, &sb_listeners, &key, BPF_ANY)) {
		sb_count(SB_STAT_LISTENER_ADD_FAILED);
		return;
	}
	sb_count(SB_STAT_LISTENER_ADDED);
}

/* What a sockops entry point does besides the original destination
 * hand-off; compile-time constants, so that a program without one does not
 * reference that feature's map and the agent can leave it uncreated. */
#define SB_OPS_SPLICE (1 << 0) /* add shortcut flows' sockets to sb_sockhash */
#define SB_OPS_LISTEN (1 << 1) /* add the sidecars' inbound listeners to sb_listeners */

static __always_inline int track(struct bpf_sock_ops *skops, const __u32 features)
{
	const bool splice = features & SB_OPS_SPLICE;
	struct bpf_sock *sk = skops->sk;
	struct ends e = {};

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (features & SB_OPS_LISTEN)
			listen_cb(skops);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sb_legacy_active(skops, sk);
		/* Only splicing has work here. */
		if (!splice)
			return 1;
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_STATE_CB:
		break;
	default:
		return 1;
	}
	if (!ops_addrs(skops, &e.local, &e.remote))
		return 1;
	e.local_port = (__u16)skops->local_port;
	e.remote_port = (__u16)bpf_ntohl(skops->remote_port);

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		connecting(skops, sk, &e);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		active_established(skops, sk, &e, splice);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive_established(skops, sk, &e, splice);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		state_changed(skops, sk, &e);
		break;
	}
	return 1;
}

/* The four sockops programs: the agent attaches the one its plan calls for
 * (splicing on or off, inbound capture on or off) and drops the others. */
SEC("sockops")
int sockops_track(struct bpf_sock_ops *skops)
{
	return track(skops, 0);
}

SEC("sockops")
int sockops_splice(struct bpf_sock_ops *skops)
{
	return track(skops, SB_OPS_SPLICE);
}

SEC("sockops")
int sockops_listen(struct bpf_sock_ops *skops)
{
	return track(skops, SB_OPS_LISTEN);
}

SEC("sockops")
int sockops_full(struct bpf_sock_ops *skops)
{
	return track(skops, SB_OPS_SPLICE | SB_OPS_LISTEN);
}
