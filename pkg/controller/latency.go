package controller

import (
	"sort"
	"time"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Percentile returns the q-th quantile (0 < q <= 1) of ds, nearest rank; 0
// for no samples.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.999999) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}

func sortPods(pods []policy.Pod) {
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
}
