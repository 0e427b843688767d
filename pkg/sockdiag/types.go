package sockdiag

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Family is an address family of the sockets to dump.
type Family uint8

// The families sock_diag's inet handler dumps.
const (
	IPv4 Family = unix.AF_INET
	IPv6 Family = unix.AF_INET6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Protocol is the transport protocol of the sockets to dump.
type Protocol uint8

// The protocols Dump supports.
const (
	TCP Protocol = unix.IPPROTO_TCP
	UDP Protocol = unix.IPPROTO_UDP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// State is a socket's state as sock_diag reports it: the kernel's TCP
// state numbers, which UDP sockets use too (CLOSE when unconnected,
// ESTABLISHED when connected).
type State uint8

// The kernel's TCP states (include/net/tcp_states.h).
const (
	StateEstablished   State = 1
	StateSynSent       State = 2
	StateSynRecv       State = 3
	StateFinWait1      State = 4
	StateFinWait2      State = 5
	StateTimeWait      State = 6
	StateClose         State = 7
	StateCloseWait     State = 8
	StateLastAck       State = 9
	StateListen        State = 10
	StateClosing       State = 11
	StateNewSynRecv    State = 12
	StateBoundInactive State = 13 // Linux 6.7: bound, neither listening nor connected
)

var stateNames = [...]string{
	StateEstablished:   "ESTABLISHED",
	StateSynSent:       "SYN_SENT",
	StateSynRecv:       "SYN_RECV",
	StateFinWait1:      "FIN_WAIT1",
	StateFinWait2:      "FIN_WAIT2",
	StateTimeWait:      "TIME_WAIT",
	StateClose:         "CLOSE",
	StateCloseWait:     "CLOSE_WAIT",
	StateLastAck:       "LAST_ACK",
	StateListen:        "LISTEN",
	StateClosing:       "CLOSING",
	StateNewSynRecv:    "NEW_SYN_RECV",
	StateBoundInactive: "BOUND_INACTIVE",
}

// String returns the kernel's name of the state, e.g. "ESTABLISHED".
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// Options selects what Dump asks the kernel for. The zero value dumps TCP
// sockets of both families.
type Options struct {
	// Protocols to dump, each with its own request; nil means TCP only.
	//
	// The kernel sends sk storage for TCP sockets only: inet_sk_diag_fill
	// returns before the storage for sockets that are not
	// connection-oriented, so a UDP socket never carries Storage (checked
	// on Linux 6.18), and a UDP dump returns nothing unless
	// IncludeWithoutStorage is set.
	Protocols []Protocol
	// Families to dump, each with its own request; nil means IPv4 and
	// IPv6. An IPv6 dump includes dual-stack sockets, whose IPv4 peers
	// appear as IPv4-mapped addresses (::ffff:a.b.c.d).
	Families []Family
	// IncludeWithoutStorage also returns the sockets the kernel sent no
	// storage for (Storage nil), e.g. to list UDP sockets with their
	// cookies and cgroups. TIME_WAIT and SYN_RECV entries are included
	// then too, with zero Inode, UID and CgroupID.
	IncludeWithoutStorage bool
}

func (o Options) protocols() []Protocol {
	if len(o.Protocols) == 0 {
		return []Protocol{TCP}
	}
	return o.Protocols
}

func (o Options) families() []Family {
	if len(o.Families) == 0 {
		return []Family{IPv4, IPv6}
	}
	return o.Families
}

// Socket is one socket of a dump, with its BPF sk storage.
type Socket struct {
	// NetnsInode identifies the socket's network namespace: the inode of
	// its nsfs file, as in /proc/PID/ns/net -> net:[NetnsInode].
	NetnsInode uint64
	// NetnsCookie is the namespace's cookie (what bpf_get_netns_cookie
	// returns), from SO_NETNS_COOKIE (Linux 5.14); 0 on older kernels.
	NetnsCookie uint64

	Family   Family
	Protocol Protocol
	State    State
	// Local and Remote are the socket's addresses; an unconnected
	// socket's Remote is the unspecified address with port 0.
	Local, Remote netip.AddrPort
	// Interface is the index of the device the socket is bound to
	// (idiag_if), 0 if none.
	Interface uint32
	// Inode is the socket's inode (as in /proc/PID/fd/N -> socket:[N]).
	Inode uint64
	// UID is the socket owner's uid in this process's user namespace.
	UID uint32
	// Cookie is the socket cookie (SO_COOKIE, bpf_get_socket_cookie).
	Cookie uint64
	// CgroupID is the cgroup v2 id of the socket (INET_DIAG_CGROUP_ID,
	// Linux 5.7), 0 if the kernel did not send it.
	CgroupID uint64

	// Storage maps the id of each requested sk_storage map that holds a
	// value for this socket to a copy of the raw value bytes (the map's
	// value size). Nil when the kernel sent no INET_DIAG_SK_BPF_STORAGES.
	Storage map[uint32][]byte
	// Truncated reports that the socket's attributes were cut short or
	// malformed, so Storage (or CgroupID) may miss entries; the parsable
	// part is kept. The kernel does not send such messages. What it does
	// do, undetectably, is leave out storage entries of a socket whose
	// storages do not fit in its largest dump buffer (about 4 MiB, only
	// reachable with dozens of maps with values near the 64 KiB limit).
	Truncated bool
}
