// Package peer holds the results the test peer (tests/sbpeer) prints, one
// JSON object per run, so that the peer and every program that runs it (the
// e2e and controller tests, the demo, the benchmark) share one definition.
package peer

// Roundtrip is what the roundtrip and stream modes print: what the
// connection looked like from both ends and whether the echo came back
// intact.
type Roundtrip struct {
	ServerSawPeer  string  `json:"server_saw_peer"`
	ServerLocal    string  `json:"server_local"`
	Getpeername    string  `json:"getpeername"`
	Getsockname    string  `json:"getsockname"`
	Bytes          int     `json:"bytes"`
	Intact         bool    `json:"intact"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

// Conns is what the conns mode prints: connections opened, each with a
// one-byte echo, and how long the connects took.
type Conns struct {
	OK       int64  `json:"ok"`
	Failed   int64  `json:"failed"`
	FirstErr string `json:"first_error,omitempty"`
	// Errors lists the failed connections by number (1-based), at most 20.
	Errors  []string `json:"errors,omitempty"`
	Seconds float64  `json:"seconds"`
	PerSec  float64  `json:"per_second"`
	P50Ms   float64  `json:"connect_p50_ms"`
	P99Ms   float64  `json:"connect_p99_ms"`
}

// Opt is the outcome of one getsockopt call.
type Opt struct {
	Errno  string `json:"errno"`
	Len    int    `json:"len"`
	Value  string `json:"value,omitempty"` // hex
	BufLen int    `json:"buf_len"`
}

// Sockopts is what the sockopts mode prints: getpeername and a set of
// getsockopt calls by name.
type Sockopts struct {
	Getpeername string         `json:"getpeername"`
	Opts        map[string]Opt `json:"opts"`
}

// Reset is what the reset mode prints: how a stream ended.
type Reset struct {
	Error   string  `json:"error"`
	Sent    int64   `json:"sent"`
	Seconds float64 `json:"seconds"`
}

// ReqResp is what the reqresp benchmark mode prints.
type ReqResp struct {
	Requests  int     `json:"requests"`
	Size      int     `json:"size"`
	Seconds   float64 `json:"seconds"`
	PerSec    float64 `json:"per_second"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
	Intact    bool    `json:"intact"`
	FirstErr  string  `json:"first_error,omitempty"`
	ServerSaw string  `json:"server_saw_peer"`
}

// Bulk is what the bulk benchmark mode prints.
type Bulk struct {
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBPerSec  float64 `json:"mb_per_second"`
	Intact    bool    `json:"intact"`
	Server    string  `json:"server_result"`
	ServerSaw string  `json:"server_saw_peer"`
}

// LongLived is what the longlived mode prints when it is stopped: how often
// its connections, opened once, were checked and how many checks failed.
type LongLived struct {
	Conns  int `json:"conns"`
	Rounds int `json:"rounds"`
	Checks int `json:"checks"`
	Failed int `json:"failed"`
	// Errors lists failed checks, at most 20.
	Errors []string `json:"errors,omitempty"`
}

// SockFill is what sockfill prints once it holds its sockets.
type SockFill struct {
	Sockets int `json:"sockets"`
	// Inserted is how many of them went into the sockhash.
	Inserted int     `json:"inserted"`
	Seconds  float64 `json:"seconds"`
}
