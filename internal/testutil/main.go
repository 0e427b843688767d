package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Main runs a package's tests and exits non-zero when any cgroup, pin or
// network namespace one of them created is still there afterwards, so a
// missed cleanup fails the run that caused it. suite names the package in
// the message. Call it from TestMain.
func Main(m *testing.M, suite string) {
	os.Exit(leakCheck(m.Run(), suite))
}

// MainWithBinaries builds each Go package in bins (package path, relative
// to the test's directory, to the variable that receives the binary's
// path) into a temporary directory that other uids can read (tests run
// sbpeer as the proxy uid), then does what Main does and removes the
// directory.
func MainWithBinaries(m *testing.M, suite string, bins map[string]*string) {
	dir, err := os.MkdirTemp("", "sockbridge-"+suite+"-bin-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for pkg, out := range bins {
		*out = filepath.Join(dir, filepath.Base(pkg))
		if b, err := exec.Command("go", "build", "-o", *out, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(leakCheck(code, suite))
}

func leakCheck(code int, suite string) int {
	if leaks := Leaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "%s tests left behind: %s\n", suite, strings.Join(leaks, ", "))
		return 1
	}
	return code
}
