// Package coexist is a stand-in for another tool's program on sockbridge's
// hooks: a socket load balancer whose cgroup/connect4 translates a service
// address to a backend, as Cilium's socket LB does. The coexistence test
// (tests/e2e/coexist_test.go) attaches it above and below sockbridge.
package coexist

// bpf2go output is committed, like the datapath's; `make generate` reruns
// this line and CI fails when it is stale.

//go:generate go tool bpf2go -target bpfel -type lb_stat lb bpf/lb.c -- -I../../bpf/include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
