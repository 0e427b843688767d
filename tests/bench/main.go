// Command bench measures what sockbridge buys compared with what a mesh
// user runs today. It builds its own pods (network namespaces on a private
// bridge in 10.250.0.0/24, kubelet-style cgroups, HAProxy as the uid-1337
// sidecar) and runs the same workloads, interleaved over several rounds,
// through five variants:
//
//  1. direct: the app dials the server, no proxy;
//  2. explicit proxy: the app dials the sidecar, which forwards to a fixed
//     server (the proxy's cost without any capture);
//  3. iptables: Istio's nat rules in the pod's namespace, REDIRECT to 15001;
//  4. sockbridge capture, splicing off;
//  5. sockbridge capture, splicing on.
//
// Variants 4 and 5 also run the mesh workloads (mesh.go): to a meshed
// server pod behind its own sidecar, the sidecar-to-sidecar path splicing
// is for. cost.go reports the cost per connection and per message.
//
// scaling.go measures how the cost grows with pods, rules and spliced
// sockets in the maps (-scaling).
//
// It writes results.md, samples.csv, summary.csv, bpf.csv, cost.csv,
// chart.png, scaling.csv and scaling.png to -out and prints the markdown, and the per-step section
// (steps.go, -steps) steps.md and steps.csv. -smoke runs one tiny round and only checks
// that every variant moved its bytes intact. docs/benchmark.md describes
// the method. Root only; everything it creates is removed on exit, on
// failure and on SIGINT/SIGTERM.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

func main() {
	s, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	t := newProgramTB()
	t.HandleSignals()
	err = run(t, s)
	t.RunCleanups()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (settings, error) {
	s := defaultSettings()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&s.Rounds, "rounds", s.Rounds, "rounds; every round runs every workload against every variant")
	smoke := fs.Bool("smoke", false, "one round with tiny sizes that only checks every variant moves its bytes intact")
	fs.StringVar(&s.Out, "out", s.Out, "results directory")
	fs.DurationVar(&s.Duration, "duration", s.Duration, "length of each request/response run")
	fs.IntVar(&s.ReqMax, "requests", s.ReqMax, "at most this many requests per request/response run")
	bulkMiB := fs.Int64("bulk-mib", s.BulkBytes>>20, "MiB uploaded by each bulk run")
	fs.IntVar(&s.Conns, "conns", s.Conns, "connections per connection-rate run")
	fs.IntVar(&s.ConnsParallel, "conns-parallel", s.ConnsParallel, "concurrent connections in the connection-rate run")
	fs.IntVar(&s.CTConns, "ct-conns", s.CTConns, "sequential connections whose conntrack entries are counted")
	variants := fs.String("variants", "1,2,3,4,5", "variants to run, comma-separated")
	fs.StringVar(&s.Sbpeer, "sbpeer", "", "prebuilt sbpeer binary (default: go build ./tests/sbpeer)")
	fs.BoolVar(&s.Scaling, "scaling", true, "also run the scaling benchmark (scaling.go): cost against pods, rules and spliced sockets in the maps")
	fs.BoolVar(&s.DNS, "dns", true, "also run the DNS row (dns.go): sockbridge's DNS capture against istio-iptables' DNS rules")
	fs.BoolVar(&s.Steps, "steps", true, "also run the per-step cost section (steps.go): where the BPF time of a proxied connection goes")
	fs.BoolVar(&s.StepsOnly, "steps-only", false, "run only the per-step cost section")
	fs.BoolVar(&s.IPv6, "ipv6", s.IPv6, "also run the IPv6 row (ipv6.go): sockbridge against ip6tables REDIRECT")
	fs.BoolVar(&s.Inbound, "inbound", s.Inbound, "also run the inbound row (inbound.go): sockbridge's sk_lookup against Istio's inbound REDIRECT")
	fs.BoolVar(&s.Main, "main", s.Main, "run the five-variant table; -main=false runs only the rows")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	s.BulkBytes = *bulkMiB << 20
	var err error
	if s.Variants, err = parseVariants(*variants); err != nil {
		return s, err
	}
	if *smoke {
		s = s.smoke()
	}
	s.Command = strings.TrimSpace("go run ./tests/bench " + strings.Join(args, " "))
	return s, s.validate()
}

func parseVariants(list string) ([]int, error) {
	var ids []int
	seen := map[int]bool{}
	for _, f := range strings.Split(list, ",") {
		id, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || variantNames[id] == "" {
			return nil, fmt.Errorf("unknown variant %q (valid: 1 to 5)", f)
		}
		if !seen[id] {
			ids = append(ids, id)
			seen[id] = true
		}
	}
	return ids, nil
}

func (s settings) validate() error {
	switch {
	case s.Rounds < 1 || s.Rounds > 50:
		return errors.New("-rounds must be 1 to 50")
	case s.Duration <= 0 || s.Duration > 5*60e9:
		return errors.New("-duration must be positive and at most 5m")
	case s.BulkBytes <= 0 || s.BulkBytes > 64<<30:
		return errors.New("-bulk-mib must be 1 to 65536")
	case s.Conns < 1 || s.Conns > 50_000 || s.CTConns < 1 || s.CTConns > 50_000:
		return errors.New("-conns and -ct-conns must be 1 to 50000")
	case s.ConnsParallel < 1 || s.ConnsParallel > 256:
		return errors.New("-conns-parallel must be 1 to 256")
	case s.ReqMax < 1:
		return errors.New("-requests must be positive")
	}
	return nil
}

// run checks privileges, runs the benchmark and writes the report.
func run(t *programTB, s settings) error {
	if err := preflight(s); err != nil {
		return err
	}
	if s.StepsOnly {
		return runStepsSection(t, s, nil)
	}
	failures := 0
	var ref []progRow
	if s.Main {
		res := runBench(t, s)
		if err := res.writeFiles(s.Out); err != nil {
			return err
		}
		fmt.Print(res.markdown())
		failures += len(res.Failures)
		ref = res.breakdown("conns")
	} else if err := startRowsOnly(s); err != nil {
		return err
	}
	if s.DNS {
		dns := runDNSBench(t, s)
		if err := dns.writeFiles(s.Out); err != nil {
			return err
		}
		fmt.Print(dns.markdown())
		failures += len(dns.Failures)
	}
	for _, row := range []struct {
		on  bool
		run func(testutil.TB, settings) *rowResults
	}{{s.IPv6, runIPv6Bench}, {s.Inbound, runInboundBench}} {
		if !row.on {
			continue
		}
		res := row.run(t, s)
		if err := res.writeFiles(s.Out); err != nil {
			return err
		}
		fmt.Print(res.markdown())
		failures += len(res.Failures)
	}
	if s.Scaling {
		sc := runScaling(t, s)
		if err := sc.writeFiles(s.Out); err != nil {
			return err
		}
		fmt.Print(sc.markdown())
		failures += len(sc.Failures)
	}
	var stepsErr error
	if s.Steps {
		stepsErr = runStepsSection(t, s, ref)
	}
	t.Logf("results in %s (results.md, samples.csv, summary.csv, bpf.csv, cost.csv, chart.png, iptables-nat.rules, dns.csv, iptables-dns.rules, ipv6.csv, ipv6.rules, inbound.csv, inbound.rules, scaling.csv, scaling.png, steps.csv, steps.md)", s.Out)
	if failures > 0 {
		return errors.Join(fmt.Errorf("%d workload run(s) failed (listed under Failures)", failures), stepsErr)
	}
	return stepsErr
}

// preflight fails early, with every missing piece named, instead of
// halfway through building the pods.
func preflight(s settings) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	tools := append([]string{"ip", "nsenter"}, requiredTools...)
	tools = append(tools, rowTools(s)...)
	if s.Sbpeer == "" {
		tools = append(tools, "go")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the benchmark needs %s (make deps installs the tools)", strings.Join(missing, ", "))
	}
	return nil
}

var _ testutil.TB = (*programTB)(nil)
