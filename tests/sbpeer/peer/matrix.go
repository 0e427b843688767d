package peer

import "fmt"

// Ways a matrix client opens its connection (Case.Open).
const (
	OpenConnect    = "connect"     // connect(), then the writes
	OpenTFOSendto  = "tfo-sendto"  // sendto(MSG_FASTOPEN) with the first chunk, no connect()
	OpenTFOConnect = "tfo-connect" // TCP_FASTOPEN_CONNECT: connect() returns at once, the first write sends the SYN
)

// Ways a matrix peer writes its stream (Stream.Write).
const (
	WriteWrite    = "write"
	WriteWritev   = "writev"   // three iovecs a call
	WriteSendmsg  = "sendmsg"  // sendmsg(2) without flags
	WriteSendfile = "sendfile" // sendfile(2) from a memfd holding the stream
	WriteSplice   = "splice"   // write into a pipe, splice(2) from the pipe to the socket
	WriteMore     = "more"     // send(MSG_MORE) except every fourth call and the last
	WriteCork     = "cork"     // TCP_CORK on, uncorked every fourth call and at the end
	WriteOOB      = "oob"      // write, with one byte in the middle sent alone with MSG_OOB
)

// Ways a matrix peer reads the other side's stream (Stream.Read).
const (
	ReadRead     = "read"     // blocking read(2)
	ReadPeek     = "peek"     // recv(MSG_PEEK), then the same bytes with recv(MSG_WAITALL): both must agree
	ReadWaitall  = "waitall"  // recvmsg(MSG_WAITALL): must fill the buffer unless the stream ends
	ReadFIONREAD = "fionread" // poll, then read exactly what FIONREAD says is queued
	ReadPoll     = "poll"     // poll(POLLIN), then non-blocking reads until EAGAIN
	ReadEpollLT  = "epoll-lt" // level-triggered epoll, one read per wake-up
	ReadEpollET  = "epoll-et" // edge-triggered epoll, drained to EAGAIN on each wake-up
)

// Writes and Reads list every way, for tests that cover them all.
var (
	Writes = []string{WriteWrite, WriteWritev, WriteSendmsg, WriteSendfile, WriteSplice, WriteMore, WriteCork, WriteOOB}
	Reads  = []string{ReadRead, ReadPeek, ReadWaitall, ReadFIONREAD, ReadPoll, ReadEpollLT, ReadEpollET}
)

// HeaderSize is the size of the case header at the start of the client's
// stream: the case as JSON, padded with spaces. It is written like the rest
// of the stream (so with TCP Fast Open it travels in the SYN).
const HeaderSize = 512

// Case is one connection of the splice matrix: the client (sbpeer
// mclient) opens it as Open says and sends the header and then Up; the
// server (sbpeer mserve) reads the header and sends Down. Both directions
// flow at once unless Sequential; each side half-closes
// (shutdown(SHUT_WR)) when it has written its stream, so one direction
// ends while the other is still flowing, and each reader checks its
// stream up to EOF.
type Case struct {
	ID   string `json:"id"`
	Open string `json:"open"`
	// NoCookie asks whoever runs the case to flush the client
	// namespace's TCP Fast Open cookies (its tcp_metrics) first: mclient
	// may run as the proxy's uid, without CAP_NET_ADMIN.
	NoCookie bool `json:"no_cookie,omitempty"`
	// Sequential makes the server send Down only once Up has ended, a
	// request and its response, instead of both at once.
	Sequential bool   `json:"sequential,omitempty"`
	Up         Stream `json:"up"`   // client to server
	Down       Stream `json:"down"` // server to client
}

// Stream is one direction of a case: its size, how the sender writes it
// and how the receiver reads it.
type Stream struct {
	Bytes  int64  `json:"bytes"`
	Write  string `json:"write"`
	Chunk  int    `json:"chunk"`            // bytes a write call
	SndBuf int    `json:"sndbuf,omitempty"` // sender's SO_SNDBUF; 0 keeps the default
	Read   string `json:"read"`             // how the receiver reads
	RcvBuf int    `json:"rcvbuf,omitempty"` // receiver's SO_RCVBUF; 0 keeps the default
	// HoldAt > 0 makes the sender stop after HoldAt bytes and keep the
	// connection open without writing: a stall on purpose, for the test
	// that shows the matrix detects one.
	HoldAt int64 `json:"hold_at,omitempty"`
}

func (s Stream) String() string {
	v := fmt.Sprintf("%s/%s %dB chunk %d", s.Write, s.Read, s.Bytes, s.Chunk)
	if s.SndBuf > 0 {
		v += fmt.Sprintf(" sndbuf %d", s.SndBuf)
	}
	if s.RcvBuf > 0 {
		v += fmt.Sprintf(" rcvbuf %d", s.RcvBuf)
	}
	return v
}

// OOBOffset is the offset in a stream written with WriteOOB of the byte
// sent with MSG_OOB.
func (s Stream) OOBOffset() int64 { return s.Bytes / 2 }

// Sent is what a sender reports about its stream.
type Sent struct {
	Bytes int64  `json:"bytes"` // bytes of the stream written (the header not counted)
	Error string `json:"error,omitempty"`
}

// Received is what a receiver found in the stream it read to EOF.
type Received struct {
	Bytes int64 `json:"bytes"` // bytes before EOF or the error
	Want  int64 `json:"want"`
	// FirstMismatch is the offset of the first byte that differs from
	// the sender's pattern, -1 when none does. A lost, duplicated or
	// reordered byte shows here.
	FirstMismatch int64 `json:"first_mismatch"`
	// OOB says where the MSG_OOB byte of a WriteOOB stream went:
	// "inline" (read in its place), "absent" (not in the stream) or
	// "cut" (the stream ended early, every byte before the end right).
	OOB   string `json:"oob,omitempty"`
	Error string `json:"error,omitempty"` // "stalled: ..." when nothing arrived within the stall deadline
}

// OK reports whether the stream arrived whole, in order and ended.
func (r Received) OK() bool {
	return r.Error == "" && r.FirstMismatch < 0 && r.Bytes == r.Want
}

// ClientResult is the line sbpeer mclient prints for each case.
type ClientResult struct {
	ID      string   `json:"id"`
	Error   string   `json:"error,omitempty"` // the connection could not be opened
	Up      Sent     `json:"up"`
	Down    Received `json:"down"`
	Seconds float64  `json:"seconds"`
}

// ServerResult is the line sbpeer mserve prints for each connection.
type ServerResult struct {
	ID    string   `json:"id"`
	Error string   `json:"error,omitempty"` // the header could not be read
	Peer  string   `json:"peer"`
	Up    Received `json:"up"`
	Down  Sent     `json:"down"`
}
