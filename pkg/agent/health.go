package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

// The readiness checks, in the order /readyz lists them.
const (
	checkDatapath = "datapath" // programs loaded and attached, maps pinned
	checkPods     = "pods"     // the pod source read and the pod map reconciled with it
	checkInbound  = "inbound"  // with inbound capture on: every pod that ran at start has it (inbound.Reconciler.NotReady)
)

// readiness holds the state of each readiness check: "" when it passes,
// otherwise why not.
type readiness struct {
	mu     sync.Mutex
	checks map[string]string
	// dynamic checks are asked at each request (the controller's state).
	dynamic map[string]func() string
}

func newReadiness() *readiness {
	return &readiness{
		checks: map[string]string{
			checkDatapath: "not loaded yet",
			checkPods:     "not reconciled yet",
		},
		dynamic: map[string]func() string{},
	}
}

// set records a check's state: "" passes.
func (r *readiness) set(check, notReady string) {
	r.mu.Lock()
	r.checks[check] = notReady
	r.mu.Unlock()
}

// follow makes check's state whatever notReady returns at each request.
func (r *readiness) follow(check string, notReady func() string) {
	r.mu.Lock()
	delete(r.checks, check)
	r.dynamic[check] = notReady
	r.mu.Unlock()
}

// failing returns "check: why" for each failing check, sorted; none when
// ready.
func (r *readiness) failing() []string {
	r.mu.Lock()
	state := map[string]string{}
	for k, v := range r.checks {
		state[k] = v
	}
	dyn := map[string]func() string{}
	for k, f := range r.dynamic {
		dyn[k] = f
	}
	r.mu.Unlock()
	for k, f := range dyn {
		state[k] = f()
	}
	var out []string
	for k, v := range state {
		if v != "" {
			out = append(out, k+": "+v)
		}
	}
	slices.Sort(out)
	return out
}

// handler serves /healthz (the process answers), /readyz (every check
// passes; otherwise 503 with one line per failing check) and /metrics.
func (r *readiness) handler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if failing := r.failing(); len(failing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(failing, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// serve listens on addr and serves h until ctx ends; it returns once
// listening (an address in use fails the agent at start), with the bound
// address (for ":0") and a function that waits for the server to stop.
func serve(ctx context.Context, addr string, h http.Handler, log logrus.FieldLogger) (net.Addr, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics and health address: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("metrics and health server stopped")
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return ln.Addr(), func() { <-done }, nil
}
