// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A stand-in for Cilium's socket load balancer, for the coexistence test
 * (tests/e2e/coexist_test.go): a cgroup/connect4 program that translates a
 * service address to a backend, as Cilium's cil_sock4_connect does for a
 * ClusterIP. Not part of sockbridge; attached by the test to a cgroup it
 * creates, above (or below) the one sockbridge attaches to.
 *
 * Kernel: cgroup/connect4 4.17.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf_endian.h>
#include <bpf_helpers.h>

/* The service and its one backend, network byte order; set from Go. */
struct lb_config {
	__u32 service_ip4;
	__u32 backend_ip4;
	__u16 service_port;
	__u16 backend_port;
};

const volatile struct lb_config lb_cfg = {};

enum lb_stat {
	LB_STAT_SEEN = 0, /* TCP connects the program ran for */
	LB_STAT_TRANSLATED, /* connects to the service rewritten to the backend */
	LB_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lb_stats SEC(".maps");

static __always_inline void lb_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&lb_stats, &stat);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != 1 /* SOCK_STREAM */)
		return 1;
	lb_count(LB_STAT_SEEN);
	if (ctx->user_ip4 != lb_cfg.service_ip4 || (__u16)ctx->user_port != lb_cfg.service_port)
		return 1;
	ctx->user_ip4 = lb_cfg.backend_ip4;
	ctx->user_port = lb_cfg.backend_port;
	lb_count(LB_STAT_TRANSLATED);
	return 1;
}

/* Emits enum lb_stat into BTF so Go names the counters from it. */
static const enum lb_stat lb_stat_btf __attribute__((used));

char __license[] SEC("license") = "Dual BSD/GPL";
