// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The datapath: one BPF object holding every program and map, built by one
 * bpf2go line (pkg/datapath/gen.go). Each hook family keeps its own file,
 * included here:
 *
 *   connect.c   cgroup/connect4 and connect6 (capture), cgroup/getpeername4 and 6
 *   sockops.c   sockops: original destination handoff, sockhash inserts
 *   sockopt.c   cgroup/getsockopt: SO_ORIGINAL_DST
 *   skmsg.c     sk_msg: splicing
 *   sklookup.c  sk_lookup (per pod network namespace): inbound capture
 *   dns.c       cgroup/sendmsg4 and 6, recvmsg4 and 6 (DNS capture), and the
 *               DNS branch of the connect hooks
 *   legacy.c    what the programs read from the earlier pinned layout's maps
 *               while connections it captured live on (after an upgrade)
 *
 * Maps, shared structs and the one load-time config (sb_cfg) are in
 * lib/sockbridge.h. The agent drops the programs its plan does not use
 * before loading (docs/datapath.md), and with them the maps only they use.
 */
#include "lib/sockbridge.h"

#include "legacy.c"
#include "connect.c"
#include "sockops.c"
#include "sockopt.c"
#include "skmsg.c"
#include "sklookup.c"
#include "dns.c"

/* Emits the enums shared with Go into BTF so bpf2go -type can see them. */
static const enum sb_stat sb_stat_btf __attribute__((used));
static const enum sb_pod_flag sb_pod_flag_btf __attribute__((used));
static const enum sb_sock_flag sb_sock_flag_btf __attribute__((used));
static const enum sb_port_action sb_port_action_btf __attribute__((used));
static const enum sb_direction sb_direction_btf __attribute__((used));

char __license[] SEC("license") = "Dual BSD/GPL";
