#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy for the controller's end-to-end tests and
# prints the path of the binary. No kube-apiserver ships as a Debian binary, but it builds
# from a scratch module that requires k8s.io/kubernetes at a release and replaces every
# staging module (k8s.io/api, k8s.io/client-go, ...) with its published v0.x of the same
# release. The binary is cached outside the clone, keyed by version, so a warm run is
# instant. A cold build takes 7-9 minutes and ~1.8 GB on 2 cores.
#
# It uses plain `go build` with the caller's GOFLAGS, like `go test`, so the compiled
# packages it shares with the tests (client-go, apimachinery) land in the same build cache
# (the -ldflags version stamp only changes the link step).
#
# Usage: scripts/kube-apiserver.sh            # prints the binary's path
# Env:   KUBE_VERSION (default v1.35.4), XDG_CACHE_HOME
set -euo pipefail

version=${KUBE_VERSION:-v1.35.4}
staging=v0${version#v1} # v1.35.4 -> v0.35.4
cache=${XDG_CACHE_HOME:-$HOME/.cache}/sockbridge
bin=$cache/kube-apiserver-$version
log() { echo "kube-apiserver.sh: $*" >&2; }

if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
# One build at a time: a second caller waits for the first and then reuses its binary.
exec 9>"$cache/kube-apiserver-$version.lock"
flock 9
if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sockbridge-kube-apiserver.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOWORK=off
go mod init sockbridge.local/kube-apiserver-build >/dev/null 2>&1

log "resolving k8s.io/kubernetes@$version"
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[[ -f $gomod ]] || { log "no go.mod for k8s.io/kubernetes@$version"; exit 1; }

# Every "k8s.io/<name> => ./staging/..." replace in kubernetes' go.mod becomes a replace
# by the published module of the same name and release (k8s.io/sample-* are not published).
edits=(-require="k8s.io/kubernetes@$version")
while read -r mod; do
	case $mod in k8s.io/sample-*) continue ;; esac
	edits+=(-replace="$mod=$mod@$staging")
done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod")
((${#edits[@]} > 1)) || { log "no staging replaces found in $gomod"; exit 1; }
go mod edit "${edits[@]}"

log "go get k8s.io/kubernetes/cmd/kube-apiserver@$version (staging modules at $staging)"
go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" >&2
log "go build k8s.io/kubernetes/cmd/kube-apiserver (cold: 7-9 minutes)"
# -ldflags only changes the link step: compiled packages stay shared with
# the tests. It stamps the release into /version (else v0.0.0-master).
minor=${version#v1.}
minor=${minor%%.*}
vpkg=k8s.io/component-base/version
go build -o "$work/kube-apiserver" \
	-ldflags "-X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
	k8s.io/kubernetes/cmd/kube-apiserver >&2
"$work/kube-apiserver" --version >&2
mv "$work/kube-apiserver" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
