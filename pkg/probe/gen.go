package probe

// The probe's BPF object (bpf/probe.c) is compiled with bpf2go's flags,
// committed and embedded, so building the agent needs no clang. It has no
// generated Go bindings: they would be a near-twin of the datapath's. Its
// names are the constants in object.go (TestObjectNames checks them against
// the object) and its counters are named from its BTF enum. `make generate`
// reruns this line; CI fails when the committed object is stale.

//go:generate ../../scripts/bpf-compile.sh ../../bpf/probe.c probe_bpfel.o -I../../bpf -I../../bpf/include -I/usr/include/x86_64-linux-gnu -Wall -Werror
