package testutil

import (
	"strings"
	"time"
)

// ConntrackWatch counts conntrack NEW events in a namespace with
// `conntrack -E -e NEW`: entries created, which a before/after count of the
// table misses when TIME_WAIT entries are reused.
type ConntrackWatch struct {
	p *Proc
}

// WatchConntrack starts counting NEW IPv4 events in ns.
func WatchConntrack(t TB, ns *Netns) *ConntrackWatch {
	t.Helper()
	return WatchConntrackFamily(t, ns, "ipv4")
}

// WatchConntrackFamily starts counting NEW events of one family ("ipv4"
// or "ipv6": conntrack -E reports one family at a time) in ns.
func WatchConntrackFamily(t TB, ns *Netns, family string) *ConntrackWatch {
	t.Helper()
	return WatchConntrackProto(t, ns, family, "tcp")
}

// WatchConntrackProto starts counting NEW events of one family ("ipv4",
// "ipv6") and protocol ("tcp", "udp") in ns.
func WatchConntrackProto(t TB, ns *Netns, family, proto string) *ConntrackWatch {
	t.Helper()
	p := Start(t, ProcSpec{Netns: ns, Args: []string{"conntrack", "-E", "-e", "NEW", "-p", proto, "-f", family}})
	// conntrack prints nothing when subscribed; give it time to bind.
	time.Sleep(300 * time.Millisecond)
	if done, err := p.Exited(); done {
		t.Fatalf("conntrack -E exited: %v\n%s", err, p.Output())
	}
	return &ConntrackWatch{p: p}
}

// Stop ends the watch and returns the number of NEW events seen.
func (w *ConntrackWatch) Stop() int {
	// Let events in flight arrive.
	time.Sleep(300 * time.Millisecond)
	w.p.Stop()
	return strings.Count(w.p.Output(), "[NEW]")
}
