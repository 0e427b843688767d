// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The capability probe's own programs (pkg/probe). Each one exercises a hook
 * the datapath relies on, the way the datapath uses it, so that a kernel that
 * has a feature but gets it wrong is caught before the agent relies on it.
 * The probe attaches them only to temporary child cgroups it creates, whose
 * sole member is a helper process in a network namespace of its own.
 *
 * This file includes no sockbridge map definitions on purpose: the datapath's
 * maps are pinned by name, the probe's must never be pinned.
 *
 * Kernel: cgroup/connect4 4.17, cgroup/getpeername4 5.8, cgroup/getsockopt
 * 5.3, sockops 4.13, sockhash, bpf_sock_hash_update and
 * bpf_msg_redirect_hash 4.18, the establishing segment in sockops
 * (skb_data) 5.10.
 */
#include <linux/bpf.h>
#include <linux/tcp.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf_endian.h>
#include <bpf_helpers.h>

/* Not in the UAPI headers BPF C can include. */
#define SBP_AF_INET 2
#define SBP_SOCK_STREAM 1
#define SBP_SOL_IP 0
#define SBP_LOCALHOST_IP 0x7f000001 /* 127.0.0.1, host order */

/* Settings fixed at load time, set from Go through spec.Variables. */
const volatile __u16 connect_from_port = 0; /* host byte order: port the helper dials */
const volatile __u16 connect_to_port = 0; /* host byte order: port it must land on */
const volatile __u32 sockopt_optname = 0; /* made-up SOL_IP option the hook answers */
const volatile __u32 sockopt_answer = 0; /* the answer */

/* Indexes of sbp_stats: what each program did, read back by the probe. */
enum sbp_stat {
	SBP_STAT_CONNECT_REWRITTEN = 0, /* connect4: destination port rewritten */
	SBP_STAT_PEERNAME_RESTORED, /* getpeername4: dialled port returned */
	SBP_STAT_SOCKOPT_ANSWERED, /* getsockopt: test option answered */
	SBP_STAT_SOCKHASH_ADDED, /* sockops: established socket added to sbp_socks */
	SBP_STAT_MSG_REDIRECTED, /* sk_msg: message redirected to the peer's ingress */
	SBP_STAT_SOCKHASH_SKIPPED, /* sockops: socket kept out, its first bytes took TCP */
	SBP_STAT_MAX,
};

/* Emits the enum into BTF so bpf2go -type can see it. */
static const enum sbp_stat sbp_stat_btf __attribute__((used));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SBP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sbp_stats SEC(".maps");

/* Established sockets of the splice self-test, keyed by local port (__u32,
 * host byte order). Sizes instead of BTF types: older kernels reject BTF
 * key/value types on socket maps. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 8);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} sbp_socks SEC(".maps");

static __always_inline void sbp_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sbp_stats, &stat);

	if (v)
		*v += 1;
}

/* Sends a connection to 127.0.0.1:connect_from_port to connect_to_port, as
 * connect4_redirect sends captured connections to the sidecar. */
SEC("cgroup/connect4")
int connect4_rewrite(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SBP_SOCK_STREAM || ctx->user_ip4 != bpf_htonl(SBP_LOCALHOST_IP))
		return 1;
	if (bpf_ntohs((__u16)ctx->user_port) != connect_from_port)
		return 1;
	ctx->user_port = bpf_htons(connect_to_port);
	sbp_count(SBP_STAT_CONNECT_REWRITTEN);
	return 1;
}

/* Answers getpeername() on the rewritten connection with the dialled port. */
SEC("cgroup/getpeername4")
int getpeername4_answer(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(SBP_LOCALHOST_IP))
		return 1;
	if (bpf_ntohs((__u16)ctx->user_port) != connect_to_port)
		return 1;
	ctx->user_port = bpf_htons(connect_from_port);
	sbp_count(SBP_STAT_PEERNAME_RESTORED);
	return 1;
}

/* Answers getsockopt(SOL_IP, sockopt_optname), which the kernel itself
 * rejects with ENOPROTOOPT, with a 4-byte sockopt_answer. */
SEC("cgroup/getsockopt")
int getsockopt_answer(struct bpf_sockopt *ctx)
{
	__u32 *val = ctx->optval;

	if (ctx->level != SBP_SOL_IP || ctx->optname != sockopt_optname)
		return 1;
	if ((void *)(val + 1) > ctx->optval_end)
		return 1;
	*val = sockopt_answer;
	ctx->optlen = sizeof(*val);
	/* clang would merge the two stores into one 8-byte store the verifier
	 * rejects for the context. */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	sbp_count(SBP_STAT_SOCKOPT_ANSWERED);
	return 1;
}

/* Whether the segment that established a passive socket carried payload,
 * as bpf/sockops.c decides it. */
static __always_inline bool established_with_data(struct bpf_sock_ops *skops)
{
	struct tcphdr *th = (void *)(long)skops->skb_data;

	if ((void *)(th + 1) > (void *)(long)skops->skb_data_end)
		return true;
	return skops->skb_len > (__u32)th->doff * 4;
}

/* Puts both ends of an established connection into sbp_socks, except a
 * connection whose first bytes travel over TCP (TCP Fast Open), which the
 * datapath keeps out the same way (bpf/sockops.c): the client when its SYN
 * carried data, the child when the segment that established it did (and
 * then its client, which may have joined, comes out). */
SEC("sockops")
int sockops_insert(struct bpf_sock_ops *skops)
{
	__u32 key;

	if (skops->family != SBP_AF_INET)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (skops->data_segs_out) {
			sbp_count(SBP_STAT_SOCKHASH_SKIPPED);
			break;
		}
		key = skops->local_port; /* host byte order */
		if (!bpf_sock_hash_update(skops, &sbp_socks, &key, BPF_ANY))
			sbp_count(SBP_STAT_SOCKHASH_ADDED);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (established_with_data(skops)) {
			key = bpf_ntohl(skops->remote_port); /* the client's port */
			bpf_map_delete_elem(&sbp_socks, &key);
			sbp_count(SBP_STAT_SOCKHASH_SKIPPED);
			break;
		}
		key = skops->local_port; /* host byte order */
		if (!bpf_sock_hash_update(skops, &sbp_socks, &key, BPF_ANY))
			sbp_count(SBP_STAT_SOCKHASH_ADDED);
		break;
	}
	return 1;
}

/* Moves each message straight to the peer socket's receive queue. A failed
 * redirect passes the message to TCP, as the datapath's fallback does; the
 * probe then sees no SBP_STAT_MSG_REDIRECTED. */
SEC("sk_msg")
int skmsg_redirect(struct sk_msg_md *msg)
{
	/* remote_port holds the be16 port in its upper half. */
	__u32 key = bpf_ntohl(msg->remote_port);

	if (bpf_msg_redirect_hash(msg, &sbp_socks, &key, BPF_F_INGRESS) == SK_PASS)
		sbp_count(SBP_STAT_MSG_REDIRECTED);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
