package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Attribute and structure numbers, checked by compiling a C program
// against /usr/include/linux/inet_diag.h and sock_diag.h (linux-libc-dev
// for 6.x); golang.org/x/sys/unix has the SK_DIAG_* ones only.
const (
	// enum { INET_DIAG_REQ_NONE, INET_DIAG_REQ_BYTECODE,
	// INET_DIAG_REQ_SK_BPF_STORAGES, INET_DIAG_REQ_PROTOCOL }
	inetDiagReqSkBPFStorages = 2
	// enum { INET_DIAG_NONE, ... INET_DIAG_PAD = 14, ...
	// INET_DIAG_ULP_INFO = 19, INET_DIAG_SK_BPF_STORAGES = 20,
	// INET_DIAG_CGROUP_ID = 21, INET_DIAG_SOCKOPT = 22 }
	inetDiagSkBPFStorages = 20
	inetDiagCgroupID      = 21

	skDiagBPFStorageReqMapFD = unix.SK_DIAG_BPF_STORAGE_REQ_MAP_FD // 1
	skDiagBPFStorage         = unix.SK_DIAG_BPF_STORAGE            // 1
	skDiagBPFStorageMapID    = unix.SK_DIAG_BPF_STORAGE_MAP_ID     // 2
	skDiagBPFStorageMapValue = unix.SK_DIAG_BPF_STORAGE_MAP_VALUE  // 3

	// struct inet_diag_req_v2: family, protocol, ext, pad (4 x u8),
	// states (u32), struct inet_diag_sockid (48 bytes).
	sizeofInetDiagReqV2 = 56
	// struct inet_diag_msg: family, state, timer, retrans (4 x u8),
	// struct inet_diag_sockid (48), expires, rqueue, wqueue, uid, inode
	// (5 x u32).
	sizeofInetDiagMsg = 72

	nlaFNetByteorder = 0x4000
	nlaTypeMask      = ^uint16(unix.NLA_F_NESTED | nlaFNetByteorder)

	// initialBufSize is the first receive buffer: the kernel sizes dump
	// datagrams after the largest buffer a reader offered, up to 32 KiB,
	// unless one socket's storages need more (then it grows the datagram
	// up to about 4 MiB, and the reader grows the buffer on MSG_TRUNC).
	initialBufSize = 32 << 10
	// maxMapFDs keeps the request's nested attribute under 64 KiB.
	maxMapFDs = (0xffff - unix.NLA_HDRLEN) / 8
)

var ne = binary.NativeEndian

// conn is a NETLINK_SOCK_DIAG socket. It stays in the network namespace it
// was created in.
type conn struct {
	fd     int
	portid uint32
	seq    uint32
	buf    []byte
}

// dial opens a NETLINK_SOCK_DIAG socket in the calling thread's network
// namespace.
func dial() (*conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open netlink sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink sock_diag socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink sock_diag socket name: %w", err)
	}
	var portid uint32
	if nl, ok := sa.(*unix.SockaddrNetlink); ok {
		portid = nl.Pid
	}
	return &conn{fd: fd, portid: portid, buf: make([]byte, initialBufSize)}, nil
}

func (c *conn) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// netnsCookie returns the cookie of the socket's network namespace, 0 if
// the kernel cannot tell (before Linux 5.14).
func (c *conn) netnsCookie() uint64 {
	v, err := unix.GetsockoptUint64(c.fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0
	}
	return v
}

// dump sends one SOCK_DIAG_BY_FAMILY dump request and calls handle with the
// payload (struct inet_diag_msg and attributes) of every reply until
// NLMSG_DONE. The payload is only valid during the call.
func (c *conn) dump(family Family, proto Protocol, mapFDs []int, handle func([]byte) error) error {
	c.seq++
	req, err := buildRequest(c.seq, family, proto, mapFDs)
	if err != nil {
		return err
	}
	for {
		err = unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("send sock_diag request: %w", err)
	}
	for {
		n, err := c.recv()
		if err != nil {
			return err
		}
		done, err := parseMessages(c.buf[:n], c.seq, c.portid, handle)
		if err != nil || done {
			return err
		}
	}
}

// recv reads one datagram from the kernel into c.buf, growing the buffer
// first if the datagram is larger (peeked with MSG_PEEK|MSG_TRUNC, which
// returns the datagram's real length).
func (c *conn) recv() (int, error) {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_PEEK|unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		if n > len(c.buf) {
			c.buf = make([]byte, (n+4095)&^4095)
		}
		var from unix.Sockaddr
		for {
			n, from, err = unix.Recvfrom(c.fd, c.buf, unix.MSG_TRUNC)
			if err != unix.EINTR {
				break
			}
		}
		if err != nil {
			return 0, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		if n > len(c.buf) {
			return 0, fmt.Errorf("receive sock_diag reply: datagram of %d bytes truncated to %d", n, len(c.buf))
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // not from the kernel
		}
		return n, nil
	}
}

// buildRequest encodes a dump request: nlmsghdr, inet_diag_req_v2 for
// every state, and INET_DIAG_REQ_SK_BPF_STORAGES with one map fd each. An
// empty nest (no fds) asks for the storage of every sk_storage map.
func buildRequest(seq uint32, family Family, proto Protocol, mapFDs []int) ([]byte, error) {
	if len(mapFDs) > maxMapFDs {
		return nil, fmt.Errorf("%d map fds, at most %d fit in one request", len(mapFDs), maxMapFDs)
	}
	nest := unix.NLA_HDRLEN + 8*len(mapFDs)
	total := unix.NLMSG_HDRLEN + sizeofInetDiagReqV2 + nest
	b := make([]byte, total)
	ne.PutUint32(b[0:], uint32(total))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], seq)
	// nlmsg_pid 0: the kernel fills in the sender.

	r := b[unix.NLMSG_HDRLEN:]
	r[0] = byte(family)
	r[1] = byte(proto)
	// idiag_ext 0: no extensions (the cgroup id comes without asking).
	ne.PutUint32(r[4:], ^uint32(0)) // idiag_states: all, BOUND_INACTIVE included
	// struct inet_diag_sockid stays zero: ignored by dumps.

	a := r[sizeofInetDiagReqV2:]
	ne.PutUint16(a[0:], uint16(nest))
	ne.PutUint16(a[2:], inetDiagReqSkBPFStorages|unix.NLA_F_NESTED)
	for i, fd := range mapFDs {
		if fd < 0 {
			return nil, fmt.Errorf("invalid map fd %d", fd)
		}
		o := unix.NLA_HDRLEN + 8*i
		ne.PutUint16(a[o:], 8)
		ne.PutUint16(a[o+2:], skDiagBPFStorageReqMapFD)
		ne.PutUint32(a[o+4:], uint32(fd))
	}
	return b, nil
}

// errMalformed marks a reply the parser could not frame.
var errMalformed = errors.New("malformed sock_diag reply")

// parseMessages walks the netlink messages of one datagram. It returns
// done at NLMSG_DONE or NLMSG_ERROR, with the errno the kernel sent, and
// skips messages of other requests (sequence or port id).
func parseMessages(b []byte, seq, portid uint32, handle func([]byte) error) (done bool, err error) {
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN {
			return true, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b))
		}
		l := ne.Uint32(b[0:])
		typ := ne.Uint16(b[4:])
		mseq := ne.Uint32(b[8:])
		mpid := ne.Uint32(b[12:])
		if l < unix.NLMSG_HDRLEN || uint64(l) > uint64(len(b)) {
			return true, fmt.Errorf("%w: message length %d of %d bytes", errMalformed, l, len(b))
		}
		payload := b[unix.NLMSG_HDRLEN:l]
		next := min(nlAlign(int(l)), len(b))
		b = b[next:]
		if mseq != seq || (portid != 0 && mpid != portid) {
			continue
		}
		switch typ {
		case unix.NLMSG_NOOP:
		case unix.NLMSG_DONE:
			// A dump's NLMSG_DONE carries an int: 0, or -errno if the
			// dump failed midway.
			if len(payload) >= 4 {
				if e := int32(ne.Uint32(payload)); e < 0 {
					return true, kernelError(-e)
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return true, fmt.Errorf("%w: short NLMSG_ERROR", errMalformed)
			}
			e := int32(ne.Uint32(payload))
			if e == 0 {
				continue // an acknowledgement
			}
			if e > 0 {
				e = -e
			}
			return true, kernelError(-e)
		case unix.NLMSG_OVERRUN:
			return true, errors.New("sock_diag reply overrun")
		case unix.SOCK_DIAG_BY_FAMILY:
			if err := handle(payload); err != nil {
				return true, err
			}
		}
	}
	return false, nil
}

func kernelError(errno int32) error {
	return fmt.Errorf("kernel answered: %w", syscall.Errno(errno))
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// walkAttrs calls fn for each netlink attribute in b, with the type's flag
// bits cleared. It returns false if b does not frame into attributes; fn
// has then seen the ones before the damage.
func walkAttrs(b []byte, fn func(typ uint16, data []byte)) bool {
	for len(b) > 0 {
		if len(b) < unix.NLA_HDRLEN {
			return false
		}
		l := int(ne.Uint16(b[0:]))
		if l < unix.NLA_HDRLEN || l > len(b) {
			return false
		}
		fn(ne.Uint16(b[2:])&nlaTypeMask, b[unix.NLA_HDRLEN:l])
		b = b[min(nlAlign(l), len(b)):]
	}
	return true
}

// parseSocket decodes one SOCK_DIAG_BY_FAMILY payload of a dump of proto.
// hasStorage reports whether the kernel sent INET_DIAG_SK_BPF_STORAGES.
func parseSocket(p []byte, proto Protocol) (s Socket, hasStorage bool, err error) {
	if len(p) < sizeofInetDiagMsg {
		return s, false, fmt.Errorf("%w: inet_diag_msg of %d bytes", errMalformed, len(p))
	}
	s.Family = Family(p[0])
	s.Protocol = proto
	s.State = State(p[1])
	sport := binary.BigEndian.Uint16(p[4:])
	dport := binary.BigEndian.Uint16(p[6:])
	switch s.Family {
	case IPv4:
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[8:12])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[24:28])), dport)
	case IPv6:
		s.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[8:24])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[24:40])), dport)
	default:
		return s, false, fmt.Errorf("%w: address family %d", errMalformed, p[0])
	}
	s.Interface = ne.Uint32(p[40:])
	s.Cookie = uint64(ne.Uint32(p[44:])) | uint64(ne.Uint32(p[48:]))<<32
	s.UID = ne.Uint32(p[64:])
	s.Inode = uint64(ne.Uint32(p[68:]))

	ok := walkAttrs(p[nlAlign(sizeofInetDiagMsg):], func(typ uint16, data []byte) {
		switch typ {
		case inetDiagCgroupID:
			if len(data) != 8 {
				s.Truncated = true
				return
			}
			s.CgroupID = ne.Uint64(data)
		case inetDiagSkBPFStorages:
			hasStorage = true
			var complete bool
			s.Storage, complete = parseStorages(data, s.Storage)
			if !complete {
				s.Truncated = true
			}
		}
	})
	if !ok {
		s.Truncated = true
	}
	return s, hasStorage, nil
}

// parseStorages decodes the entries of INET_DIAG_SK_BPF_STORAGES into m
// (allocated if nil), copying the values. complete is false if an entry
// lacks its map id or value, or the attributes do not frame.
func parseStorages(b []byte, m map[uint32][]byte) (_ map[uint32][]byte, complete bool) {
	if m == nil {
		m = make(map[uint32][]byte)
	}
	complete = true
	ok := walkAttrs(b, func(typ uint16, data []byte) {
		if typ != skDiagBPFStorage {
			return
		}
		var (
			id            uint32
			value         []byte
			haveID, haveV bool
		)
		inner := walkAttrs(data, func(typ uint16, data []byte) {
			switch typ {
			case skDiagBPFStorageMapID:
				if len(data) == 4 {
					id, haveID = ne.Uint32(data), true
				}
			case skDiagBPFStorageMapValue:
				value, haveV = bytes.Clone(data), true
			}
		})
		if !inner || !haveID || !haveV {
			complete = false
			return
		}
		if value == nil {
			value = []byte{}
		}
		m[id] = value
	})
	return m, ok && complete
}
