package main

// The step programs of the "where the time goes" section (steps.go) are
// compiled with bpf2go's flags, committed and embedded, like the coexist
// stand-in's: no generated Go bindings, the names are the constants in
// steps.go, which TestStepsObjectNames checks against the object.
// `make generate` reruns this line and CI fails when the committed object
// is stale.

//go:generate ../../scripts/bpf-compile.sh bpf/steps.c steps_bpfel.o -I../../bpf/include -I/usr/include/x86_64-linux-gnu -Wall -Werror
