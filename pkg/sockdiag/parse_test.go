package sockdiag

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"maps"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The numbers the package hardcodes, as the uapi headers define them
// (checked with a C program against linux-libc-dev): a renumbering slip
// here makes every dump come back empty.
func TestUAPINumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"INET_DIAG_REQ_SK_BPF_STORAGES", inetDiagReqSkBPFStorages, 2},
		{"INET_DIAG_SK_BPF_STORAGES", inetDiagSkBPFStorages, 20},
		{"INET_DIAG_CGROUP_ID", inetDiagCgroupID, 21},
		{"SK_DIAG_BPF_STORAGE_REQ_MAP_FD", skDiagBPFStorageReqMapFD, 1},
		{"SK_DIAG_BPF_STORAGE", skDiagBPFStorage, 1},
		{"SK_DIAG_BPF_STORAGE_MAP_ID", skDiagBPFStorageMapID, 2},
		{"SK_DIAG_BPF_STORAGE_MAP_VALUE", skDiagBPFStorageMapValue, 3},
		{"sizeof(struct inet_diag_req_v2)", sizeofInetDiagReqV2, 56},
		{"sizeof(struct inet_diag_msg)", sizeofInetDiagMsg, 72},
		{"SOCK_DIAG_BY_FAMILY", unix.SOCK_DIAG_BY_FAMILY, 20},
		{"NETLINK_SOCK_DIAG", unix.NETLINK_SOCK_DIAG, 4},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// Builders for handcrafted replies, in the kernel's native byte order.

func attr(typ uint16, payload ...[]byte) []byte {
	data := bytes.Join(payload, nil)
	b := make([]byte, 4, 4+len(data)+3)
	ne.PutUint16(b[0:], uint16(4+len(data)))
	ne.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// unpadded is attr without the trailing alignment bytes.
func unpadded(typ uint16, payload ...[]byte) []byte {
	b := attr(typ, payload...)
	return b[:ne.Uint16(b)]
}

func u32b(v uint32) []byte { return ne.AppendUint32(nil, v) }
func u64b(v uint64) []byte { return ne.AppendUint64(nil, v) }

// storageEntry is one SK_DIAG_BPF_STORAGE, flagged nested as the kernel's
// nla_nest_start does.
func storageEntry(id uint32, value []byte) []byte {
	return attr(skDiagBPFStorage|unix.NLA_F_NESTED,
		attr(skDiagBPFStorageMapID, u32b(id)),
		attr(skDiagBPFStorageMapValue, value))
}

type msgSpec struct {
	family        uint8
	state         uint8
	local, remote netip.AddrPort
	ifindex       uint32
	cookie        uint64
	uid, inode    uint32
}

func diagMsg(m msgSpec, attrs ...[]byte) []byte {
	b := make([]byte, sizeofInetDiagMsg)
	b[0], b[1] = m.family, m.state
	binary.BigEndian.PutUint16(b[4:], m.local.Port())
	binary.BigEndian.PutUint16(b[6:], m.remote.Port())
	if m.family == unix.AF_INET {
		a, r := m.local.Addr().As4(), m.remote.Addr().As4()
		copy(b[8:], a[:])
		copy(b[24:], r[:])
	} else {
		a, r := m.local.Addr().As16(), m.remote.Addr().As16()
		copy(b[8:], a[:])
		copy(b[24:], r[:])
	}
	ne.PutUint32(b[40:], m.ifindex)
	ne.PutUint32(b[44:], uint32(m.cookie))
	ne.PutUint32(b[48:], uint32(m.cookie>>32))
	ne.PutUint32(b[64:], m.uid)
	ne.PutUint32(b[68:], m.inode)
	return append(b, bytes.Join(attrs, nil)...)
}

func nlmsg(typ uint16, seq, pid uint32, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload)+3)
	ne.PutUint32(b[0:], uint32(16+len(payload)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], unix.NLM_F_MULTI)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[12:], pid)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

var (
	v4msg = msgSpec{
		family: unix.AF_INET, state: uint8(StateEstablished),
		local:  netip.MustParseAddrPort("10.1.2.3:40000"),
		remote: netip.MustParseAddrPort("192.0.2.7:443"),
		cookie: 0x0000_0102_0304_0506, uid: 1000, inode: 123456,
	}
	v6msg = msgSpec{
		family: unix.AF_INET6, state: uint8(StateListen),
		local:  netip.MustParseAddrPort("[fd00::1]:8080"),
		remote: netip.MustParseAddrPort("[::]:0"),
		cookie: 0xdead_beef_0000_0001, uid: 0, inode: 7, ifindex: 3,
	}
	val8  = []byte{1, 2, 3, 4, 5, 6, 7, 8}
	val16 = bytes.Repeat([]byte{0xab, 0xcd}, 8)
	val5  = []byte{9, 8, 7, 6, 5}
)

func TestParseSocket(t *testing.T) {
	tests := []struct {
		name        string
		msg         []byte
		proto       Protocol
		want        Socket
		wantStorage bool
		wantErr     bool
	}{{
		name: "ipv4 with cgroup id and two storages",
		msg: diagMsg(v4msg,
			attr(8, []byte{0}), // INET_DIAG_SHUTDOWN
			attr(inetDiagCgroupID, u64b(0x1234)),
			attr(inetDiagSkBPFStorages|unix.NLA_F_NESTED, storageEntry(7, val8), storageEntry(9, val16)),
			attr(22, []byte{0, 0}), // INET_DIAG_SOCKOPT
		),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456, CgroupID: 0x1234,
			Storage: map[uint32][]byte{7: val8, 9: val16},
		},
		wantStorage: true,
	}, {
		name:  "ipv6 without storage",
		msg:   diagMsg(v6msg, attr(inetDiagCgroupID, u64b(1)), attr(11, []byte{1})),
		proto: UDP,
		want: Socket{
			Family: IPv6, Protocol: UDP, State: StateListen,
			Local: v6msg.local, Remote: v6msg.remote, Interface: 3,
			Cookie: 0xdead_beef_0000_0001, Inode: 7, CgroupID: 1,
		},
	}, {
		name: "nests without NLA_F_NESTED, pad attribute, unpadded last value",
		msg: diagMsg(v4msg, unpadded(inetDiagSkBPFStorages,
			unpadded(skDiagBPFStorage,
				attr(skDiagBPFStorageMapID, u32b(3)),
				attr(1, nil), // SK_DIAG_BPF_STORAGE_PAD
				unpadded(skDiagBPFStorageMapValue, val5)))),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456,
			Storage: map[uint32][]byte{3: val5},
		},
		wantStorage: true,
	}, {
		name: "storage entry without value is dropped, the other kept",
		msg: diagMsg(v4msg, attr(inetDiagSkBPFStorages,
			attr(skDiagBPFStorage, attr(skDiagBPFStorageMapID, u32b(4))),
			storageEntry(5, val8))),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456,
			Storage: map[uint32][]byte{5: val8}, Truncated: true,
		},
		wantStorage: true,
	}, {
		name: "attributes cut short: what came before is kept",
		msg: func() []byte {
			m := diagMsg(v4msg, attr(inetDiagCgroupID, u64b(99)),
				attr(inetDiagSkBPFStorages, storageEntry(5, val16)))
			return m[:len(m)-6]
		}(),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456, CgroupID: 99,
			Truncated: true,
		},
	}, {
		name: "storage nest whose entry is cut short",
		msg: func() []byte {
			nest := attr(inetDiagSkBPFStorages, storageEntry(5, val16))
			ne.PutUint16(nest[4:], 200) // the entry claims more than the nest holds
			return diagMsg(v4msg, nest)
		}(),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456,
			Storage: map[uint32][]byte{}, Truncated: true,
		},
		wantStorage: true,
	}, {
		name:  "cgroup id of the wrong size",
		msg:   diagMsg(v4msg, attr(inetDiagCgroupID, u32b(5))),
		proto: TCP,
		want: Socket{
			Family: IPv4, Protocol: TCP, State: StateEstablished,
			Local: v4msg.local, Remote: v4msg.remote,
			Cookie: 0x0000_0102_0304_0506, UID: 1000, Inode: 123456, Truncated: true,
		},
	}, {
		name:    "short inet_diag_msg",
		msg:     diagMsg(v4msg)[:71],
		wantErr: true,
	}, {
		name:    "unknown address family",
		msg:     diagMsg(msgSpec{family: unix.AF_UNIX, local: v4msg.local, remote: v4msg.remote}),
		wantErr: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, has, err := parseSocket(tt.msg, tt.proto)
			if tt.wantErr {
				if err == nil || !errors.Is(err, errMalformed) {
					t.Fatalf("err = %v, want errMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if has != tt.wantStorage {
				t.Errorf("hasStorage = %v, want %v", has, tt.wantStorage)
			}
			gotStorage, wantStorage := got.Storage, tt.want.Storage
			got.Storage, tt.want.Storage = nil, nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("socket\n got %+v\nwant %+v", got, tt.want)
			}
			if (gotStorage == nil) != (wantStorage == nil) || !maps.EqualFunc(gotStorage, wantStorage, bytes.Equal) {
				t.Errorf("storage = %x, want %x", gotStorage, wantStorage)
			}
		})
	}
}

// The values must be copies: the receive buffer is reused.
func TestParseSocketCopiesValues(t *testing.T) {
	msg := diagMsg(v4msg, attr(inetDiagSkBPFStorages, storageEntry(1, val8)))
	s, _, err := parseSocket(msg, TCP)
	if err != nil {
		t.Fatal(err)
	}
	for i := range msg {
		msg[i] = 0xff
	}
	if !bytes.Equal(s.Storage[1], val8) {
		t.Fatalf("value changed with the buffer: %x", s.Storage[1])
	}
}

// One reply as the kernel sends it on little-endian machines, written out
// byte by byte, so that the builders above cannot hide a layout mistake.
func TestParseSocketLiteral(t *testing.T) {
	if ne.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the literal is little-endian")
	}
	msg, err := hex.DecodeString(strings.Join([]string{
		"02", "01", "00", "00", // AF_INET, ESTABLISHED, timer, retrans
		"9c40", "01bb", // sport 40000, dport 443 (big-endian)
		"0a010203", "000000000000000000000000", // src 10.1.2.3
		"c0000207", "000000000000000000000000", // dst 192.0.2.7
		"00000000",             // if
		"06050403", "02010000", // cookie 0x0000010203040506
		"00000000", "00000000", "00000000", // expires, rqueue, wqueue
		"e8030000", "40e20100", // uid 1000, inode 123456
		"0c00", "1500", "3412000000000000", // INET_DIAG_CGROUP_ID 0x1234
		"1c00", "1480", // INET_DIAG_SK_BPF_STORAGES|NLA_F_NESTED, 28 bytes
		"1800", "0180", // SK_DIAG_BPF_STORAGE|NLA_F_NESTED, 24 bytes
		"0800", "0200", "07000000", // MAP_ID 7
		"0c00", "0300", "0102030405060708", // MAP_VALUE
	}, ""))
	if err != nil {
		t.Fatal(err)
	}
	s, has, err := parseSocket(msg, TCP)
	if err != nil || !has {
		t.Fatalf("has %v, err %v", has, err)
	}
	if s.Local != v4msg.local || s.Remote != v4msg.remote || s.Cookie != 0x0102_0304_0506 ||
		s.UID != 1000 || s.Inode != 123456 || s.CgroupID != 0x1234 || s.State != StateEstablished || s.Truncated {
		t.Errorf("socket %+v", s)
	}
	if len(s.Storage) != 1 || !bytes.Equal(s.Storage[7], val8) {
		t.Errorf("storage %x", s.Storage)
	}
}

func TestWalkAttrs(t *testing.T) {
	type seen struct {
		typ uint16
		n   int
	}
	tests := []struct {
		name string
		b    []byte
		want []seen
		ok   bool
	}{
		{"empty", nil, nil, true},
		{"two", append(attr(1, []byte{1}), attr(2, u32b(0))...), []seen{{1, 1}, {2, 4}}, true},
		{"flags cleared", attr(5|unix.NLA_F_NESTED|nlaFNetByteorder, nil), []seen{{5, 0}}, true},
		{"unpadded last", attr(3, []byte{1, 2, 3})[:7], []seen{{3, 3}}, true},
		{"length below header", []byte{2, 0, 1, 0}, nil, false},
		{"length past end", append(attr(1, u32b(1)), 12, 0, 2, 0, 0, 0), []seen{{1, 4}}, false},
		{"trailing bytes", append(attr(1, nil), 0, 0), []seen{{1, 0}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []seen
			ok := walkAttrs(tt.b, func(typ uint16, data []byte) { got = append(got, seen{typ, len(data)}) })
			if ok != tt.ok || len(got) != len(tt.want) {
				t.Fatalf("ok %v, saw %v; want ok %v, %v", ok, got, tt.ok, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("saw %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestParseMessages(t *testing.T) {
	sock1 := diagMsg(v4msg)
	sock2 := diagMsg(v6msg)
	done := nlmsg(unix.NLMSG_DONE, 5, 77, u32b(0))
	negErrno := func(errno syscall.Errno) []byte { return u32b(uint32(-int32(errno))) }
	errMsg := func(errno syscall.Errno) []byte {
		// struct nlmsgerr: int error, then the request's header.
		return nlmsg(unix.NLMSG_ERROR, 5, 77, append(negErrno(errno), make([]byte, 16)...))
	}
	tests := []struct {
		name     string
		b        []byte
		handled  int
		done     bool
		wantErrs []error
	}{
		{"multipart then done", bytes.Join([][]byte{
			nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock1),
			nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock2),
			done,
		}, nil), 2, true, nil},
		{"more to come", nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock1), 1, false, nil},
		{"other sequence and port skipped", bytes.Join([][]byte{
			nlmsg(unix.SOCK_DIAG_BY_FAMILY, 4, 77, sock1),
			nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 78, sock1),
			nlmsg(unix.NLMSG_DONE, 4, 77, u32b(0)),
			nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock2),
		}, nil), 1, false, nil},
		{"noop and ack skipped", bytes.Join([][]byte{
			nlmsg(unix.NLMSG_NOOP, 5, 77, nil),
			errMsg(0),
			done,
		}, nil), 0, true, nil},
		{"EPERM", errMsg(unix.EPERM), 0, true, []error{unix.EPERM}},
		{"EINVAL after a socket", append(nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock1), errMsg(unix.EINVAL)...), 1, true, []error{unix.EINVAL}},
		{"done with an errno", nlmsg(unix.NLMSG_DONE, 5, 77, negErrno(unix.ENOBUFS)), 0, true, []error{unix.ENOBUFS}},
		{"done without payload", nlmsg(unix.NLMSG_DONE, 5, 77, nil), 0, true, nil},
		{"length past the datagram", nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock1)[:40], 0, true, []error{errMalformed}},
		{"short header", []byte{1, 2, 3}, 0, true, []error{errMalformed}},
		{"short socket message", nlmsg(unix.SOCK_DIAG_BY_FAMILY, 5, 77, sock1[:20]), 0, true, []error{errMalformed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handled := 0
			done, err := parseMessages(tt.b, 5, 77, func(p []byte) error {
				if _, _, err := parseSocket(p, TCP); err != nil {
					return err
				}
				handled++
				return nil
			})
			if done != tt.done || handled != tt.handled {
				t.Errorf("done %v, handled %d; want %v, %d", done, handled, tt.done, tt.handled)
			}
			if tt.wantErrs == nil && err != nil {
				t.Errorf("err = %v", err)
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want %v", err, want)
				}
			}
		})
	}
}

func TestBuildRequest(t *testing.T) {
	b, err := buildRequest(7, IPv6, UDP, []int{3, 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 16+56+4+8+8 {
		t.Fatalf("request of %d bytes", len(b))
	}
	if ne.Uint32(b[0:]) != uint32(len(b)) || ne.Uint16(b[4:]) != 20 ||
		ne.Uint16(b[6:]) != unix.NLM_F_REQUEST|unix.NLM_F_DUMP || ne.Uint32(b[8:]) != 7 {
		t.Errorf("header %x", b[:16])
	}
	r := b[16:]
	if r[0] != unix.AF_INET6 || r[1] != unix.IPPROTO_UDP || r[2] != 0 || ne.Uint32(r[4:]) != 0xffffffff {
		t.Errorf("inet_diag_req_v2 %x", r[:8])
	}
	if !bytes.Equal(r[8:56], make([]byte, 48)) {
		t.Errorf("sockid %x", r[8:56])
	}
	want := attr(inetDiagReqSkBPFStorages|unix.NLA_F_NESTED,
		attr(skDiagBPFStorageReqMapFD, u32b(3)),
		attr(skDiagBPFStorageReqMapFD, u32b(10)))
	if !bytes.Equal(r[56:], want) {
		t.Errorf("attribute\n got %x\nwant %x", r[56:], want)
	}

	// No map fds: an empty nest, which asks for every map's storage.
	b, err = buildRequest(1, IPv4, TCP, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b[16+56:], attr(inetDiagReqSkBPFStorages|unix.NLA_F_NESTED); !bytes.Equal(got, want) {
		t.Errorf("empty nest %x, want %x", got, want)
	}

	if _, err := buildRequest(1, IPv4, TCP, []int{3, -1}); err == nil {
		t.Error("negative fd accepted")
	}
	if _, err := buildRequest(1, IPv4, TCP, make([]int, maxMapFDs+1)); err == nil {
		t.Error("too many fds accepted")
	}
	if _, err := buildRequest(1, IPv4, TCP, make([]int, maxMapFDs)); err != nil {
		t.Errorf("%d fds: %v", maxMapFDs, err)
	}
}

func TestNames(t *testing.T) {
	for s, want := range map[State]string{
		StateEstablished: "ESTABLISHED", StateListen: "LISTEN", StateClose: "CLOSE",
		StateTimeWait: "TIME_WAIT", StateNewSynRecv: "NEW_SYN_RECV", StateBoundInactive: "BOUND_INACTIVE",
		0: "STATE(0)", 200: "STATE(200)",
	} {
		if s.String() != want {
			t.Errorf("State(%d) = %q, want %q", uint8(s), s.String(), want)
		}
	}
	if dumpName(TCP, IPv4) != "tcp4" || dumpName(UDP, IPv6) != "udp6" {
		t.Error(dumpName(TCP, IPv4), dumpName(UDP, IPv6))
	}
	var o Options
	if len(o.protocols()) != 1 || o.protocols()[0] != TCP || len(o.families()) != 2 {
		t.Errorf("defaults %v %v", o.protocols(), o.families())
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err         error
		unsupported bool
		permission  bool
	}{
		{unix.EINVAL, true, false},
		{unix.EOPNOTSUPP, true, false},
		{enotsupp, true, false},
		{ebpf.ErrNotSupported, true, false},
		{unix.EPERM, false, true},
		{unix.EACCES, false, true},
		{unix.ENOMEM, false, false},
		{errors.New("other"), false, false},
	} {
		err := classify("step", c.err)
		if errors.Is(err, ErrUnsupported) != c.unsupported || errors.Is(err, ErrPermission) != c.permission {
			t.Errorf("%v: %v: unsupported %v, permission %v", c.err, err,
				errors.Is(err, ErrUnsupported), errors.Is(err, ErrPermission))
		}
		if !errors.Is(err, c.err) || !strings.HasPrefix(err.Error(), "step: ") {
			t.Errorf("%v: %q does not wrap it", c.err, err)
		}
	}
	if !errors.Is(ErrUnsupported, ebpf.ErrNotSupported) || !errors.Is(ErrPermission, os.ErrPermission) {
		t.Error("verdicts do not match the generic errors")
	}
}

func TestProbeVerdict(t *testing.T) {
	self := Socket{Inode: 42, Local: netip.MustParseAddrPort("127.0.0.1:5000")}
	with := func(s Socket, storage map[uint32][]byte) Socket { s.Storage = storage; return s }
	other := Socket{Inode: 43, Local: self.Local, Storage: map[uint32][]byte{7: val8}}
	for _, c := range []struct {
		name        string
		socks       []Socket
		ok          bool
		unsupported bool
		text        string
	}{
		{"value back", []Socket{other, with(self, map[uint32][]byte{7: val8, 8: val5})}, true, false, ""},
		{"no storage attribute", []Socket{other, self}, false, true, "kernel sent no sk storage: INET_DIAG_REQ_SK_BPF_STORAGES needs Linux 5.2"},
		{"another map", []Socket{with(self, map[uint32][]byte{8: val8})}, false, false, "not of map 7"},
		{"another value", []Socket{with(self, map[uint32][]byte{7: val16})}, false, false, "kernel sent value"},
		{"missing", []Socket{other}, false, false, "missing from the dump of 1 sockets"},
	} {
		err := probeVerdict(c.socks, 42, 5000, 7, val8)
		if (err == nil) != c.ok || errors.Is(err, ErrUnsupported) != c.unsupported || errors.Is(err, ErrPermission) ||
			(err != nil && !strings.Contains(err.Error(), c.text)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
