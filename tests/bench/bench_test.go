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
	t.Logf("\n%s", res.markdown())
	for _, f := range res.Failures {
		t.Errorf("%s", f)
	}
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
	}
}
