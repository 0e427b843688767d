package controller

import (
	"sort"
	"sync"
	"time"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// latencies keeps the last n API event -> datapath delays.
type latencies struct {
	mu   sync.Mutex
	buf  []time.Duration
	next int
	full bool
}

func newLatencies(n int) *latencies { return &latencies{buf: make([]time.Duration, n)} }

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.buf[l.next] = d
	l.next++
	if l.next == len(l.buf) {
		l.next, l.full = 0, true
	}
	l.mu.Unlock()
}

func (l *latencies) snapshot() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.full {
		return append([]time.Duration(nil), l.buf[:l.next]...)
	}
	return append(append([]time.Duration(nil), l.buf[l.next:]...), l.buf[:l.next]...)
}

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
