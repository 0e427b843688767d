// Package coexist is a stand-in for another tool's program on sockbridge's
// hooks: a socket load balancer whose cgroup/connect4 translates a service
// address to a backend, as Cilium's socket LB does. The coexistence test
// (tests/e2e/coexist_test.go) attaches it above and below sockbridge.
package coexist

// The object is compiled with bpf2go's flags, committed and embedded, like
// the probe's. It has no generated Go bindings (they would be a near-twin of
// the datapath's): its names are the constants in lb.go, which
// TestObjectNames checks against the object. `make generate` reruns this
// line and CI fails when the committed object is stale.

//go:generate ../../scripts/bpf-compile.sh bpf/lb.c lb_bpfel.o -I../../bpf/include -I/usr/include/x86_64-linux-gnu -Wall -Werror
