package main

import (
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m, "bench")
}

// TestBenchSmoke runs the benchmark's smoke mode: one tiny round of every
// workload through every variant, checking only that the bytes arrived
// intact along the variant's path. No timing is asserted.
func TestBenchSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, append([]string{"go"}, requiredTools...)...)
	s := defaultSettings().smoke()
	s.Out = t.TempDir()
	s.Command = "go test ./tests/bench -run TestBenchSmoke"
	res := runBench(t, s)
	if err := res.writeFiles(s.Out); err != nil {
		t.Errorf("write results: %v", err)
	}
	logSection(t, res.markdown(), res.Failures)
	for _, v := range res.Variants {
		if v.Unavailable != "" {
			t.Logf("variant %d (%s) not available: %s", v.ID, v.Name, v.Unavailable)
			continue
		}
		for _, m := range metrics {
			if _, ok := res.summary().get(v.ID, m.key); !ok {
				t.Errorf("variant %d (%s): no %s", v.ID, v.Name, m.key)
			}
		}
		for _, key := range wantCostMetrics(v.ID, res.BPFNote == "") {
			if _, ok := res.summary().get(v.ID, key); !ok {
				t.Errorf("variant %d (%s): no %s", v.ID, v.Name, key)
			}
		}
	}
}

// wantCostMetrics are the cost metrics variant id must have: the mesh
// workloads for the sockbridge variants and, where the kernel counts BPF
// run time, the BPF per connection and, with splicing, the sk_msg cost.
func wantCostMetrics(id int, bpfStats bool) []string {
	if id != sockbridge && id != splice {
		return nil
	}
	var keys []string
	if bpfStats {
		keys = append(keys, "bpf_ns_per_conn")
	}
	for _, m := range meshSizes {
		keys = append(keys, m.label+"_p50_us", m.label+"_rps")
		if bpfStats {
			keys = append(keys, m.label+"_bpf_ns_per_req")
			if id == splice {
				keys = append(keys, m.label+"_skmsg_ns_per_msg", m.label+"_skmsg_msgs_per_req")
			}
		}
	}
	return keys
}
