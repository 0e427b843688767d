# sockbridge — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
STRIP ?= llvm-strip-19
CLANG_FORMAT ?= clang-format-19
BIN := bin
GENERATE_PKGS := ./pkg/datapath/... ./pkg/probe/... ./tests/coexist/... ./tests/bench/...
BPF_SOURCES := $(wildcard bpf/*.c bpf/lib/*.h tests/coexist/bpf/*.c tests/bench/bpf/*.c)
# BPF C the format and lint targets check (bpf/include is copied in, never edited).
BPF_C := 'bpf/*.c' 'bpf/lib/*.h' 'tests/coexist/bpf/*.c' 'tests/bench/bpf/*.c'
# What make generate writes: bpf2go's bindings and objects (hand-written Go
# in the same packages is not its business), in pkg/ and for the test-only
# objects (tests/coexist: the stand-in socket LB; tests/bench: the step
# programs of the cost breakdown).
GENERATED := ':(glob)pkg/**/*_bpfel.go' ':(glob)pkg/**/*_bpfel.o' ':(glob)pkg/**/*.o' \
	':(glob)tests/**/*_bpfel.go' ':(glob)tests/**/*_bpfel.o'

.PHONY: help generate build build-static test test-unit test-privileged test-kernels fuzz bench demo format lint check-generated deps clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## Regenerate the BPF objects and Go bindings with bpf2go (needs clang-19)
	BPF2GO_CC=$(CLANG) BPF2GO_STRIP=$(STRIP) $(GO) generate $(GENERATE_PKGS)

build: ## Build bin/sockbridge and bin/sbpeer (no clang needed)
	$(GO) build -o $(BIN)/sockbridge ./cmd/sockbridge
	$(GO) build -o $(BIN)/sbpeer ./tests/sbpeer

build-static: ## Build the static agent binary the Dockerfile ships (CGO_ENABLED=0)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w" -o $(BIN)/sockbridge-static ./cmd/sockbridge

UNIT_PKGS := ./pkg/... ./cmd/... ./internal/...
PRIVILEGED_PKGS := ./tests/...

test-unit: ## Run the unit tests (no root needed; privileged tests in pkg/probe skip without root)
	$(GO) test -count=1 $(UNIT_PKGS)

test-privileged: deps kube-apiserver ## Run the end-to-end tests (tests/...: kernel, HAProxy, kube-apiserver, manifests), one package at a time (root; CI=true turns skips into failures)
	$(GO) test -count=1 -p 1 -timeout 60m $(PRIVILEGED_PKGS)

test-kernels: ## Boot Debian's 6.1 and 6.12 cloud kernels under qemu and run the probe and core e2e tests inside (root)
	scripts/test-kernels.sh

fuzz: ## Fuzz the annotation parser briefly (FUZZTIME, default 10s)
	$(GO) test -run='^$$' -fuzz=FuzzEvaluate -fuzztime=$(or $(FUZZTIME),10s) ./pkg/policy

test: deps kube-apiserver ## Run every test: unit, fuzz, privileged end-to-end (as root)
	$(GO) test -count=1 $(UNIT_PKGS)
	$(MAKE) --no-print-directory fuzz
	$(GO) test -count=1 -p 1 -timeout 60m $(PRIVILEGED_PKGS)

demo: deps build ## Build, probe the kernel and run two demo pods through the datapath with HAProxy as sidecar (root)
	$(GO) run ./tests/demo

bench: build ## Benchmark direct, explicit proxy, iptables and sockbridge side by side, plus DNS, IPv6, inbound, scaling and per-step cost sections (root; BENCH_ARGS="-rounds 5")
	$(GO) run ./tests/bench $(BENCH_ARGS)

format: ## Format Go and C sources
	gofmt -w $$(git ls-files '*.go')
	$(CLANG_FORMAT) -i $$(git ls-files $(BPF_C))

lint: ## go vet, gofmt and clang-format checks, no bpf_printk in BPF sources
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(CLANG_FORMAT) --dry-run --Werror $$(git ls-files $(BPF_C))
	@if grep -n 'bpf_printk\|bpf_trace_printk' $$(git ls-files $(BPF_C)); then echo "remove bpf_printk"; exit 1; fi

check-generated: generate ## Fail when the committed bpf2go output differs from a fresh generate
	@git diff --exit-code --stat -- $(GENERATED) || { echo "generated BPF output is stale: run make generate and commit"; exit 1; }
	@if [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then git status --porcelain -- $(GENERATED); echo "generated files not committed"; exit 1; fi

deps: ## Install the Debian packages the build, tests, demo and benchmark need (root)
	scripts/install-deps.sh

clean: ## Remove build output
	rm -rf $(BIN)

.PHONY: kube-apiserver
kube-apiserver: ## Build kube-apiserver from the Go module proxy for the controller and manifest tests (cached by version; cold 7-9 min)
	@scripts/kube-apiserver.sh
