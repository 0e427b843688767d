// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Step programs for the benchmark's "where the time goes" section
 * (tests/bench/steps.go, issue 14). Not part of sockbridge: each program
 * does exactly one step that the datapath (bpf/connect.c, bpf/sockops.c)
 * does, the same way, on the same hook, and nothing else, so that its run
 * time (BPF_ENABLE_STATS) minus that of the empty program on the same
 * hook is the step's cost. All are attached together to a private cgroup
 * the benchmark creates and fills with its own client and server, so every
 * program sees the same connections.
 *
 * A step program that did its step adds one to step_done (step_failed when
 * the helper failed): the smoke test checks the counts, and the cost of
 * that one increment (an inlined array lookup and an atomic add) is part
 * of each step's number.
 *
 * Kernel: as the datapath's (bpf_sk_storage_get from sock_addr 5.11,
 * bpf_get_netns_cookie from sockops 5.15).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf_endian.h>
#include <bpf_helpers.h>

#define AF_INET 2
#define SOCK_STREAM 1

/* Set from Go: the "pod IP" step_c4_bind binds (network byte order) and
 * the server's port (host byte order), which tells a passive socket from
 * an active one. */
struct step_config {
	__be32 pod_ip4;
	__u32 server_port;
};

const volatile struct step_config step_cfg = {};

/* Slots of step_done and step_failed, in steps.go's order. */
enum step_id {
	STEP_STORAGE = 0, /* connect4: socket storage created */
	STEP_BIND, /* connect4: bpf_bind to the pod IP */
	STEP_GENERATION, /* connect4: generation array looked up */
	STEP_CG_HIT, /* connect4: cgroup cache hit */
	STEP_CG_MISS, /* connect4: cgroup cache miss, entry inserted */
	STEP_PASSIVE_STORAGE, /* sockops: passive socket storage created */
	STEP_TUPLE_PUT, /* sockops: tuple published at TCP_CONNECT_CB */
	STEP_TUPLE_TAKE, /* sockops: tuple found and deleted at PASSIVE_ESTABLISHED */
	STEP_SOCKHASH, /* sockops: socket added to the sockhash */
	STEP_MAX,
};

/* The datapath's struct sb_sock, struct sb_tuple and struct sb_sock_key
 * (bpf/lib/sockbridge.h), same sizes. */
struct step_addr {
	__be32 w[4];
};

struct step_sock {
	struct step_addr addr;
	__be16 port;
	__u16 flags;
	__u32 pad;
};

struct step_tuple {
	__u64 netns;
	struct step_addr client;
	struct step_addr server;
	__u16 client_port;
	__u16 server_port;
	__u32 pad;
};

struct step_cg_entry {
	__u64 pod_cgroup_id;
	__u64 generation;
};

/* As sb_socks. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct step_sock);
} step_socks SEC(".maps");

/* As sb_generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} step_generation SEC(".maps");

/* As sb_cg_cache: the hit step's map, where Go puts the cgroup's entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct step_cg_entry);
} step_cg_cache SEC(".maps");

/* As sb_cg_cache: the miss step's map, keyed by socket cookie so that
 * every connect misses and inserts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct step_cg_entry);
} step_cg_miss SEC(".maps");

/* As sb_tuples. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct step_tuple);
	__type(value, struct step_sock);
} step_tuples SEC(".maps");

/* As sb_sockhash, with step_msg_pass attached as sb_sockhash has the
 * datapath's sk_msg program. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct step_tuple);
	__type(value, __u64);
} step_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STEP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} step_done SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STEP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} step_failed SEC(".maps");

/* sockops callbacks by side and op: slot side * STEP_OP_SLOTS + op, side 0
 * active (the client's socket), 1 passive (the server's, by its port).
 * BPF_SOCK_OPS_STATE_CB is counted at its op for a move to TCP_CLOSE and
 * at STEP_OP_STATE_OTHER for any other state. */
#define STEP_OP_SLOTS 32
#define STEP_OP_STATE_OTHER 31
#define TCP_CLOSE 7

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * STEP_OP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} step_ops SEC(".maps");

static __always_inline void step_add(void *map, __u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(map, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void done(__u32 step)
{
	step_add(&step_done, step);
}

static __always_inline void failed(__u32 step)
{
	step_add(&step_failed, step);
}

/* The floor of cgroup/connect4: what running any program costs, with run
 * time accounting on. Attached first and last (..._last): the floor is
 * their mean, and their difference shows what a program's place in the
 * hook's list costs. */
SEC("cgroup/connect4")
int step_c4_empty(struct bpf_sock_addr *ctx)
{
	return 1;
}

SEC("cgroup/connect4")
int step_c4_empty_last(struct bpf_sock_addr *ctx)
{
	return 1;
}

/* connect.c remember(): the captured socket's storage, created. */
SEC("cgroup/connect4")
int step_c4_storage(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct step_sock *s;

	if (!sk)
		return 1;
	s = bpf_sk_storage_get(&step_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		failed(STEP_STORAGE);
		return 1;
	}
	s->addr.w[3] = ctx->user_ip4;
	s->port = (__be16)ctx->user_port;
	s->flags = 1;
	done(STEP_STORAGE);
	return 1;
}

/* connect.c bind_pod_ip(): the pod IP as the source, port left to connect. */
SEC("cgroup/connect4")
int step_c4_bind(struct bpf_sock_addr *ctx)
{
	struct sockaddr_in sa = {};

	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = step_cfg.pod_ip4;
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa))) {
		failed(STEP_BIND);
		return 1;
	}
	done(STEP_BIND);
	return 1;
}

/* connect.c current_pod(): the generation lookup every connect makes. */
SEC("cgroup/connect4")
int step_c4_gen(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	__u64 *gen;

	gen = bpf_map_lookup_elem(&step_generation, &zero);
	if (!gen || *gen == ~0ULL) {
		failed(STEP_GENERATION);
		return 1;
	}
	done(STEP_GENERATION);
	return 1;
}

/* connect.c current_pod() on a hit: the task's cgroup id and its cached
 * entry. */
SEC("cgroup/connect4")
int step_c4_cg_hit(struct bpf_sock_addr *ctx)
{
	__u64 self = bpf_get_current_cgroup_id();
	struct step_cg_entry *cached;

	cached = bpf_map_lookup_elem(&step_cg_cache, &self);
	if (!cached || !cached->pod_cgroup_id) {
		failed(STEP_CG_HIT);
		return 1;
	}
	done(STEP_CG_HIT);
	return 1;
}

/* connect.c current_pod() on a miss, less the ancestor walk: the lookup
 * that misses and the LRU update that follows. */
SEC("cgroup/connect4")
int step_c4_cg_miss(struct bpf_sock_addr *ctx)
{
	__u64 key = bpf_get_socket_cookie(ctx);
	struct step_cg_entry entry = {};

	if (bpf_map_lookup_elem(&step_cg_miss, &key)) {
		failed(STEP_CG_MISS);
		return 1;
	}
	entry.pod_cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_update_elem(&step_cg_miss, &key, &entry, BPF_ANY)) {
		failed(STEP_CG_MISS);
		return 1;
	}
	done(STEP_CG_MISS);
	return 1;
}

/* Whether a sockops socket is the server's (accepted or listening). */
static __always_inline bool passive_side(struct bpf_sock_ops *skops)
{
	return skops->local_port == step_cfg.server_port;
}

/* The floor of sockops: every callback runs it; first and last, as on
 * connect4. */
SEC("sockops")
int step_ops_empty(struct bpf_sock_ops *skops)
{
	return 1;
}

SEC("sockops")
int step_ops_empty_last(struct bpf_sock_ops *skops)
{
	return 1;
}

/* Counts the callbacks by side and op, and asks for state callbacks on
 * the client's socket at TCP_CONNECT_CB, as sockops.c connecting() does
 * for a captured socket. Its run time is not a step. */
SEC("sockops")
int step_ops_count(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	__u32 side = passive_side(skops) ? 1 : 0;

	if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] != TCP_CLOSE)
		op = STEP_OP_STATE_OTHER;
	if (op >= STEP_OP_SLOTS)
		op = STEP_OP_STATE_OTHER - 1;
	step_add(&step_ops, side * STEP_OP_SLOTS + op);
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB && !side)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

/* sockops.c passive_established(): the accepted socket's storage, created. */
SEC("sockops")
int step_ops_pstore(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct step_sock *s;

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || !sk)
		return 1;
	s = bpf_sk_storage_get(&step_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		failed(STEP_PASSIVE_STORAGE);
		return 1;
	}
	s->flags = 4;
	done(STEP_PASSIVE_STORAGE);
	return 1;
}

/* A connection as its client sees it, loopback: with the netns cookie, as
 * sockops.c tuple_key() keys a connection with a node-local end. */
static __always_inline void tuple_of(struct bpf_sock_ops *skops, struct step_tuple *key,
				     const bool passive)
{
	__be32 local = skops->local_ip4, remote = skops->remote_ip4;
	__u16 local_port = (__u16)skops->local_port;
	__u16 remote_port = (__u16)bpf_ntohl(skops->remote_port);

	key->client.w[2] = bpf_htonl(0x0000ffff);
	key->server.w[2] = bpf_htonl(0x0000ffff);
	if (passive) {
		key->client.w[3] = remote;
		key->client_port = remote_port;
		key->server.w[3] = local;
		key->server_port = local_port;
	} else {
		key->client.w[3] = local;
		key->client_port = local_port;
		key->server.w[3] = remote;
		key->server_port = remote_port;
	}
	key->netns = bpf_get_netns_cookie(skops);
}

/* sockops.c connecting() and passive_established(): the client publishes
 * the original destination at TCP_CONNECT_CB, the accepted socket takes it
 * and deletes the entry at PASSIVE_ESTABLISHED. */
SEC("sockops")
int step_ops_tuple(struct bpf_sock_ops *skops)
{
	struct step_tuple key = {};
	struct step_sock val = {}, *orig;

	if (skops->family != AF_INET)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		tuple_of(skops, &key, false);
		val.addr.w[3] = skops->remote_ip4;
		val.port = (__be16)bpf_ntohl(skops->remote_port);
		val.flags = 1;
		if (bpf_map_update_elem(&step_tuples, &key, &val, BPF_ANY)) {
			failed(STEP_TUPLE_PUT);
			return 1;
		}
		done(STEP_TUPLE_PUT);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		tuple_of(skops, &key, true);
		orig = bpf_map_lookup_elem(&step_tuples, &key);
		if (!orig || bpf_map_delete_elem(&step_tuples, &key)) {
			failed(STEP_TUPLE_TAKE);
			return 1;
		}
		done(STEP_TUPLE_TAKE);
		return 1;
	}
	return 1;
}

/* sockops.c splice_add(): each end of the connection joins the sockhash
 * when it is established. */
SEC("sockops")
int step_ops_shash(struct bpf_sock_ops *skops)
{
	struct step_tuple key = {};

	if (skops->family != AF_INET)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* The key as the socket sees itself: local end as "client". */
		tuple_of(skops, &key, false);
		if (bpf_sock_hash_update(skops, &step_sockhash, &key, BPF_ANY)) {
			failed(STEP_SOCKHASH);
			return 1;
		}
		done(STEP_SOCKHASH);
		return 1;
	}
	return 1;
}

/* The sockhash's sk_msg program: passes every message over TCP. */
SEC("sk_msg")
int step_msg_pass(struct sk_msg_md *msg)
{
	return SK_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
