// Package testutil builds the throw-away environment privileged tests,
// the demo and the benchmark run in: child cgroups, network namespaces wired
// to a private bridge, bpffs pin directories and processes placed in a
// cgroup and netns from their first instruction. Everything it creates is
// removed by the cleanup it registers, in reverse order, even when the test
// fails.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TB is the part of testing.TB the helpers use; the demo and the benchmark
// provide their own.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// InCI reports whether the tests run under CI, where a missing privilege or
// kernel feature is a failure rather than a reason to skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// Unavailable fails t under CI and skips it elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skipf("skipped: %s (set CI=true to make this a failure)", msg)
}

// RequirePrivileged makes sure the test runs as root with the tools the
// environment helpers call.
func RequirePrivileged(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "the test needs root")
	}
	for _, tool := range append([]string{"ip", "nsenter"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "the test needs %s in PATH", tool)
		}
	}
}

// RandomSuffix returns 8 hex characters for unique names.
func RandomSuffix() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Run runs a command and fails t with its output when it fails.
func Run(t TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ReadableTempDir creates a temporary directory that processes running as
// another uid (the proxy's) can read, unlike a test's 0700 TempDir, and
// removes it at cleanup.
func ReadableTempDir(t TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("temporary directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// KnownHazardsEnv names the environment variable that lists, comma
// separated, the probe self-tests expected to fail on the kernel under test
// because that kernel has the bug they detect (e.g. "selftest/splice" on
// Debian's 6.1, whose sk_msg ingress queue is invisible to FIONREAD).
// scripts/test-kernels.sh sets it per kernel series from its table of
// measured hazards. Unset, every self-test must pass: a self-test failing on
// a kernel not listed there is a test failure, not a shrug.
const KnownHazardsEnv = "SOCKBRIDGE_KNOWN_HAZARDS"

// KnownHazards returns the self-tests expected to fail here (see
// KnownHazardsEnv), as a set of feature names.
func KnownHazards() map[string]bool {
	set := map[string]bool{}
	for _, name := range strings.Split(os.Getenv(KnownHazardsEnv), ",") {
		if name = strings.TrimSpace(name); name != "" {
			set[name] = true
		}
	}
	return set
}
