// Command sockbridge is the node agent that captures service-mesh sidecar
// traffic with eBPF instead of iptables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sockbridge:", err)
		os.Exit(exitCode(err))
	}
}
