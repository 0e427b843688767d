// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A BPF iterator over sb_socks: writes one struct sb_sock per socket that
 * carries sockbridge state, so the agent (and `sockbridge maps`) can list
 * the live captured flows and tests can show that no state outlives its
 * socket. Socket local storage cannot be dumped with get_next_key.
 *
 * Kernel: iter/bpf_sk_storage_map 5.9, BTF (CO-RE reads of the iterator
 * context).
 */
#include "lib/sockbridge.h"

struct seq_file;
struct bpf_map;
struct sock;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_sk_storage_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	struct sock *sk;
	void *value;
} __attribute__((preserve_access_index));

SEC("iter/bpf_sk_storage_map")
int iter_socks(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sb_sock *s = ctx->value;

	if (!ctx->sk || !s)
		return 0;
	bpf_seq_write(ctx->meta->seq, s, sizeof(*s));
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
