#!/usr/bin/env bash
# Copies libbpf's BPF-side headers into bpf/include. They are never edited
# there; bump by installing another libbpf-dev and rerunning this script.
# Current copy: libbpf v1.1.2 (Debian 12 libbpf-dev 1:1.1.2-0+deb12u1).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${LIBBPF_INCLUDE:-/usr/include/bpf}
for h in bpf_helpers.h bpf_helper_defs.h bpf_endian.h bpf_core_read.h bpf_tracing.h; do
	cp "$src/$h" bpf/include/
done
echo "copied from $src: $(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo unknown version)"
