// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Legacy fallbacks: how this layout's programs finish the connections the
 * earlier pinned layout's programs captured. Part of the one datapath
 * object: compiled through bpf/datapath.c, not on its own.
 *
 * Layout 1 (the released agent up to commit 9048814: IPv4 only, every map
 * pinned flat in the pin directory) kept a captured connection's original
 * destination in its sb_socks (struct sb_sock_v1) and, during the
 * handshake, in its sb_tuples. An upgrade switches the hooks one by one in
 * place (pkg/datapath: getsockopt, sockops, getpeername ..., connect last),
 * so a connection captured by the old connect4 is handed over by this
 * sockops and answered by this getsockopt and getpeername, at once or, for
 * a long-lived one, much later. The agent passes the old pinned maps in as
 * sb_socks_v1 and sb_tuples_v1 (CollectionOptions.MapReplacements), keeps
 * them pinned in <pin dir>/v<N>/legacy/ and sets sb_cfg.legacy_layout to 1
 * until no socket carries layout 1's storage any more. Otherwise these maps
 * are placeholders, legacy_layout is 0, and the verifier removes every
 * fallback below as dead code: a datapath with no upgrade behind it pays
 * nothing.
 *
 * Each fallback is one call where this layout's state is read:
 *   sb_sock_or_legacy   after the sb_socks lookups of getpeername,
 *                       sockops' TCP_CONNECT_CB and getsockopt: layout 1's
 *                       storage is copied into this layout's, once per
 *                       socket (IPv4 v4-mapped, the flags that mean the
 *                       same), and later steps find it there;
 *   sb_tuple_or_legacy  after sockops' sb_tuples lookup at
 *                       PASSIVE_ESTABLISHED: a client whose
 *                       ACTIVE_ESTABLISHED ran under the old sockops
 *                       published in layout 1's sb_tuples;
 *   sb_legacy_active    at sockops' ACTIVE_ESTABLISHED: a client whose
 *                       TCP_CONNECT_CB ran under the old sockops (which
 *                       published at ACTIVE_ESTABLISHED, not there) has
 *                       published nothing yet, and does now.
 *
 * Kernel: nothing beyond what connect.c, sockops.c and sockopt.c need.
 */
#include "lib/sockbridge.h"

/* The layout sb_cfg.legacy_layout names when these maps are layout 1's. */
#define SB_LEGACY_LAYOUT_1 1

/* Layout 1's sb_socks value. Its flags 1, 2, 4 mean what SB_SOCK_CAPTURED,
 * SB_SOCK_SHORTCUT and SB_SOCK_ORIGDST mean; 8 marked a spliced inbound
 * passthrough socket, which nothing here needs. */
struct sb_sock_v1 {
	__be32 ip4; /* original destination, network byte order */
	__be16 port; /* network byte order */
	__u16 flags;
};

#define SB_SOCK_V1_CARRIED (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT | SB_SOCK_ORIGDST)

/* Layout 1's sb_tuples key: a connection as its client sees it. */
struct sb_tuple_v1 {
	__u64 netns; /* netns cookie when the server end is in 127.0.0.0/8, else 0 */
	__be32 client_ip4; /* network byte order */
	__be32 server_ip4; /* network byte order */
	__u16 client_port; /* host byte order */
	__u16 server_port; /* host byte order */
	__u32 pad;
};

/* Not pinned by name: the agent passes layout 1's pinned maps in. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sb_sock_v1);
} sb_socks_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SB_MAX_TUPLES);
	__type(key, struct sb_tuple_v1);
	__type(value, struct sb_sock_v1);
} sb_tuples_v1 SEC(".maps");

/* s when this layout's lookup found it; else this layout's storage of sk
 * made from layout 1's, or NULL when sk has neither. */
static __always_inline struct sb_sock *sb_sock_or_legacy(struct sb_sock *s, struct bpf_sock *sk)
{
	struct sb_sock_v1 *old;

	if (s || sb_cfg.legacy_layout != SB_LEGACY_LAYOUT_1 || !sk)
		return s;
	old = bpf_sk_storage_get(&sb_socks_v1, sk, 0, 0);
	if (!old || !(old->flags & SB_SOCK_V1_CARRIED))
		return NULL;
	s = bpf_sk_storage_get(&sb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		sb_count(SB_STAT_STORAGE_FAILED);
		return NULL;
	}
	sb_addr_set4(&s->addr, old->ip4);
	s->port = old->port;
	s->flags = old->flags & SB_SOCK_V1_CARRIED;
	sb_count(SB_STAT_LEGACY_SOCK);
	return s;
}

/* orig when this layout's sb_tuples had the handshake; else the original
 * destination a client published in layout 1's sb_tuples, copied into out
 * (the entry is consumed), or NULL. key is this layout's tuple key. */
static __always_inline struct sb_sock *
sb_tuple_or_legacy(struct sb_sock *orig, const struct sb_tuple *key, struct sb_sock *out)
{
	struct sb_tuple_v1 old_key = {};
	struct sb_sock_v1 *old;

	if (orig || sb_cfg.legacy_layout != SB_LEGACY_LAYOUT_1)
		return orig;
	if (!sb_addr_is4(&key->client) || !sb_addr_is4(&key->server))
		return NULL;
	old_key.client_ip4 = key->client.w[3];
	old_key.server_ip4 = key->server.w[3];
	old_key.client_port = key->client_port;
	old_key.server_port = key->server_port;
	/* key->netns is the cookie whenever the server end is loopback. */
	old_key.netns = sb_addr_is_loopback(&key->server) ? key->netns : 0;
	old = bpf_map_lookup_elem(&sb_tuples_v1, &old_key);
	if (!old)
		return NULL;
	sb_addr_set4(&out->addr, old->ip4);
	out->port = old->port;
	out->flags = old->flags & SB_SOCK_V1_CARRIED;
	out->pad = 0;
	bpf_map_delete_elem(&sb_tuples_v1, &old_key);
	sb_count(SB_STAT_LEGACY_TUPLE);
	return out;
}

/* ACTIVE_ESTABLISHED of a client layout 1's connect4 captured and whose
 * TCP_CONNECT_CB ran under layout 1's sockops: publishes its original
 * destination in this layout's sb_tuples, as TCP_CONNECT_CB would have
 * (sockops.c's connecting), before its final ACK lets the sidecar's child
 * appear. Layout 1 captured AF_INET sockets only. */
static __always_inline void sb_legacy_active(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct sb_tuple key = {};
	struct sb_sock_v1 *old;
	struct sb_sock *s;

	if (sb_cfg.legacy_layout != SB_LEGACY_LAYOUT_1 || skops->family != SB_AF_INET)
		return;
	old = bpf_sk_storage_get(&sb_socks_v1, sk, 0, 0);
	if (!old || !(old->flags & (SB_SOCK_CAPTURED | SB_SOCK_SHORTCUT)))
		return;
	/* Taken over at TCP_CONNECT_CB, which published it then. */
	if (bpf_sk_storage_get(&sb_socks, sk, 0, 0))
		return;
	s = sb_sock_or_legacy(NULL, sk);
	if (!s)
		return;
	sb_addr_set4(&key.client, SB_LOAD_U32(skops, local_ip4));
	sb_addr_set4(&key.server, SB_LOAD_U32(skops, remote_ip4));
	key.client_port = (__u16)skops->local_port;
	key.server_port = (__u16)bpf_ntohl(skops->remote_port);
	if (sb_needs_netns(&key.client, &key.server))
		key.netns = bpf_get_netns_cookie(skops);
	if (bpf_map_update_elem(&sb_tuples, &key, s, BPF_ANY)) {
		sb_count(SB_STAT_TUPLE_FAILED);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}
