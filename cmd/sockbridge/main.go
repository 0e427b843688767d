// Command sockbridge is the node agent that captures service-mesh sidecar
// traffic with eBPF instead of iptables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf/rlimit"

	"github.com/sockbridge/sockbridge/pkg/probe"
)

func main() {
	// A re-executed probe helper runs its self-test and exits here.
	probe.RunHelperIfRequested()
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil && os.Geteuid() == 0 {
		fmt.Fprintln(os.Stderr, "sockbridge: remove memlock rlimit:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sockbridge:", err)
		os.Exit(exitCode(err))
	}
}
