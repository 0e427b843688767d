#!/usr/bin/env bash
# Compiles one BPF C file into an object with the flags bpf2go uses
# (cilium/ebpf cmd/bpf2go/gen/compile.go) and strips its DWARF, keeping BTF.
# For an object that is embedded without Go bindings (the probe's: bpf2go's
# bindings would be a near-twin of the datapath's).
#
# Usage: scripts/bpf-compile.sh SOURCE.c OUTPUT.o [clang flags...]
# Env:   BPF2GO_CC (default clang-19), BPF2GO_STRIP (default llvm-strip-19)
set -euo pipefail
src=$1 out=$2
shift 2
cc=${BPF2GO_CC:-clang-19}
strip=${BPF2GO_STRIP:-llvm-strip-19}
srcdir=$(cd "$(dirname "$src")" && pwd)
"$cc" -O2 -mcpu=v1 -Wunused-command-line-argument -target bpfel \
	-c "$srcdir/$(basename "$src")" -o "$out" -fno-ident \
	-fdebug-prefix-map="$srcdir"="$(dirname "$src")" -fdebug-compilation-dir . -g \
	"$@"
"$strip" -g "$out"
