package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// ctScope is where conntrack entries are counted: one namespace, one
// protocol, one family or both.
type ctScope struct {
	ns     *testutil.Netns
	proto  string // "tcp" or "udp"
	family string // "ipv4" or "ipv6"; "" for both
}

// ctCount is how many conntrack entries one run created.
type ctCount struct {
	n int
	// fromTable: `conntrack -E` lost events (ENOBUFS), so n is the
	// table's size instead of the NEW events.
	fromTable bool
}

// countConntrack counts the conntrack entries run creates in sc.ns; the
// main table's conntrack workload, the DNS section and the IPv6 and
// inbound rows all count this way. Two counts of the same run: the NEW
// events `conntrack -E` sees (of sc.proto and sc.family), and the size of
// the namespace's table (`conntrack -C`, per namespace, every protocol
// and family) after the run, flushed (`conntrack -F`, of sc.family)
// before it; the benchmark's own namespaces hold no connection a flush
// could hurt. The events are the count; when the kernel dropped events
// (ENOBUFS, seen on a busy machine despite its 16 MiB buffer) the table
// count stands in and the caller's report says how often. Entries live
// 120 s in TIME_WAIT (UDP ones 30 s), far longer than a run, and
// sequential connections do not reuse a tuple, so the two agree on a
// quiet machine. label names the run in the log. An error of run is
// returned as it is.
func countConntrack(t testutil.TB, label string, sc ctScope, run func() error) (ctCount, error) {
	ct := func(args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"--net=" + sc.ns.Path(), "--", "conntrack"}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("conntrack %s in %s: %v: %s", strings.Join(args, " "), sc.ns.Name, err, out)
		}
		return string(out), nil
	}
	var family []string
	if sc.family != "" {
		family = []string{"-f", sc.family}
	}
	if _, err := ct(append([]string{"-F"}, family...)...); err != nil {
		return ctCount{}, err
	}
	args := append([]string{"conntrack", "-E", "-e", "NEW", "-p", sc.proto}, family...)
	p := testutil.Start(t, testutil.ProcSpec{Netns: sc.ns, Args: append(args, "-b", strconv.Itoa(16<<20))})
	time.Sleep(300 * time.Millisecond) // conntrack prints nothing once subscribed
	if done, err := p.Exited(); done {
		return ctCount{}, fmt.Errorf("conntrack -E exited: %v\n%s", err, p.Output())
	}
	err := run()
	time.Sleep(300 * time.Millisecond) // events in flight
	p.Stop()
	if err != nil {
		return ctCount{}, err
	}
	table, err := ct("-C")
	if err != nil {
		return ctCount{}, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(table))
	if err != nil {
		return ctCount{}, fmt.Errorf("conntrack -C printed %q", table)
	}
	if out := p.Output(); !strings.Contains(out, "ENOBUFS") {
		events := strings.Count(out, "[NEW]")
		if events != n {
			t.Logf("%s: %d conntrack NEW events, %d entries in the table", label, events, n)
		}
		return ctCount{n: events}, nil
	}
	t.Logf("%s: conntrack -E lost events (ENOBUFS), counted the table instead: %d entries", label, n)
	return ctCount{n: n, fromTable: true}, nil
}

// ctPerConn counts the conntrack entries the sequential connections of
// conns create (countConntrack) and returns them per connection
// (ct_per_conn) with the connections made; a count taken from the table
// adds one to *fromTable.
func ctPerConn(t testutil.TB, label string, sc ctScope, fromTable *int, conns func() (peer.Conns, error)) (map[string]float64, int, error) {
	var r peer.Conns
	c, err := countConntrack(t, label, sc, func() (err error) {
		r, err = conns()
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	if c.fromTable {
		*fromTable++
	}
	return map[string]float64{"ct_per_conn": float64(c.n) / float64(r.OK)}, int(r.OK), nil
}

// writeCTFromTable says how many conntrack runs of a section were counted
// from the table; nothing when none was.
func writeCTFromTable(b *strings.Builder, n int) {
	if n > 0 {
		fmt.Fprintf(b, "\nConntrack runs counted from the table (`conntrack -F` before, `-C` after) because `conntrack -E` lost events (ENOBUFS): %d.\n", n)
	}
}
