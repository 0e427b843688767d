package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sockbridge/sockbridge/pkg/probe"
)

func newProbeCommand() *cobra.Command {
	var (
		opts    probe.Options
		asJSON  bool
		without []string
	)
	c := &cobra.Command{
		Use:   "probe",
		Short: "Report what this kernel supports and what the agent would enable",
		Long: "Probe the kernel for every feature sockbridge uses and run functional self-tests\n" +
			"in temporary cgroups and network namespaces. Exit code 0 when the agent can run,\n" +
			"1 when it would refuse to, 2 on usage errors. See docs/kernel-support.md.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("probe takes no arguments, got %q", args)}
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error {
			report, err := probe.Run(c.Context(), opts)
			if err != nil {
				return err
			}
			for _, name := range without {
				if _, ok := report.Feature(name); !ok {
					return usageError{fmt.Errorf("--without %q: no such feature (see sockbridge probe)", name)}
				}
			}
			report = report.Without(without...)
			if asJSON {
				enc := json.NewEncoder(c.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(report); err != nil {
					return err
				}
			} else {
				printReport(c.OutOrStdout(), report)
			}
			return report.Err()
		},
	}
	fl := c.Flags()
	fl.BoolVar(&asJSON, "json", false, "print the report as JSON (docs/probe-json.md)")
	fl.StringVar(&opts.CgroupRoot, "cgroup-root", "", "cgroup v2 mount (default: detected from /proc/self/mountinfo)")
	fl.StringVar(&opts.CgroupParent, "cgroup-parent", "", "cgroup under which the probe creates its temporary cgroups, absolute or relative to --cgroup-root (default: the cgroup v2 root)")
	fl.StringVar(&opts.BPFFS, "bpffs", probe.DefaultBPFFS, "directory that must be on a bpf filesystem")
	fl.StringSliceVar(&without, "without", nil, "report these features as missing, to see the plan without them")
	return c
}

// printReport prints the report as a table ending with the plan.
func printReport(w io.Writer, r *probe.Report) {
	fmt.Fprintf(w, "kernel %s, probed in %d ms\n\n", r.KernelRelease, r.DurationMS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tFEATURE\tRESULT\tSINCE\tNEEDED FOR\tDETAIL")
	for _, f := range r.Features {
		detail := f.Detail
		if !f.Supported {
			detail = f.Reason()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Kind, f.Name, f.Result(), f.MinKernel, f.NeededFor, detail)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, line := range r.Plan().Lines() {
		fmt.Fprintln(w, line)
	}
}
