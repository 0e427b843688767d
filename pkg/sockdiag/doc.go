// Package sockdiag lists the sockets that carry BPF socket-local storage
// (BPF_MAP_TYPE_SK_STORAGE), through the kernel's sock_diag netlink
// interface rather than a bpf_iter program, so it works on kernels that
// refuse BPF tracing programs.
//
// A dump asks NETLINK_SOCK_DIAG for every TCP (or UDP) socket of one family
// in one network namespace, with the nested request attribute
// INET_DIAG_REQ_SK_BPF_STORAGES holding one SK_DIAG_BPF_STORAGE_REQ_MAP_FD
// per map. For each socket that has storage in one of those maps, the
// kernel appends INET_DIAG_SK_BPF_STORAGES: one nested SK_DIAG_BPF_STORAGE
// per map, each with SK_DIAG_BPF_STORAGE_MAP_ID (u32) and
// SK_DIAG_BPF_STORAGE_MAP_VALUE (the raw value). This is what
// `ss --bpf-maps` and `ss --bpf-map-id=ID` use.
//
// # Kernel requirements
//
//   - Linux 5.2 for INET_DIAG_REQ_SK_BPF_STORAGES and for updating an
//     sk_storage map from user space with a socket fd as the key (Probe).
//     Older kernels ignore the request attribute and send sockets without
//     storage; Dump then returns nothing and Probe reports ErrUnsupported.
//   - bpf_capable() (CAP_BPF or CAP_SYS_ADMIN, in the initial user
//     namespace) for a request that names maps: without it the kernel
//     answers EPERM. A plain dump needs no privilege; this package never
//     sends one.
//   - CAP_SYS_ADMIN to enter another network namespace (setns), and read
//     access to /proc/PID/task/TID/ns/net (ptrace read access) to find it.
//   - INET_DIAG_CGROUP_ID (Linux 5.7, CONFIG_SOCK_CGROUP_DATA) is sent for
//     every full socket without being requested; Socket.CgroupID is 0 when
//     the kernel did not send it.
//   - Storage comes with TCP sockets only. For UDP (and raw) sockets
//     inet_sk_diag_fill returns before it reaches the storage, so a UDP
//     dump lists sockets but never their storage (Linux 6.18 still).
//     UDP dumps need CONFIG_INET_UDP_DIAG (the kernel answers ENOENT
//     otherwise).
//
// sock_diag is per network namespace: Dump covers one, DumpAll every
// namespace that Namespaces finds on the host.
package sockdiag
