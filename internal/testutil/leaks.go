package testutil

import (
	"os"
	"sync"
)

// created records what this process's helpers made, so TestMain can tell
// whether every cleanup ran without mistaking another run's namespaces or
// cgroups for its own.
var created struct {
	mu    sync.Mutex
	paths []string // cgroups, pin directories: gone when the path is
	netns []string
}

func track(path string) {
	created.mu.Lock()
	created.paths = append(created.paths, path)
	created.mu.Unlock()
}

func trackNetns(name string) {
	created.mu.Lock()
	created.netns = append(created.netns, name)
	created.mu.Unlock()
}

// Leaks lists the cgroups, pin directories and namespaces this process
// created that still exist. Call it from TestMain after m.Run.
func Leaks() []string {
	created.mu.Lock()
	defer created.mu.Unlock()
	var leaks []string
	for _, p := range created.paths {
		if _, err := os.Stat(p); err == nil {
			leaks = append(leaks, p)
		}
	}
	for _, n := range created.netns {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			leaks = append(leaks, "netns "+n)
		}
	}
	return leaks
}

// PinDir returns a fresh bpffs directory name for one test's datapath and
// registers it for the leak check; the caller's cleanup must remove it
// (datapath.Uninstall does).
func PinDir(t TB) string {
	t.Helper()
	dir := "/sys/fs/bpf/sockbridge-test-" + RandomSuffix()
	track(dir)
	return dir
}
