package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// CgroupPrefix starts the name of every temporary cgroup the probe creates.
const CgroupPrefix = "sockbridge-probe-"

// makeCgroup creates the child cgroup parent/name; an empty name means a
// unique CgroupPrefix name.
func makeCgroup(parent, name string) (string, error) {
	if name == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("random cgroup name: %w", err)
		}
		name = CgroupPrefix + hex.EncodeToString(b[:])
	}
	path := filepath.Join(parent, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", fmt.Errorf("create temporary cgroup: %w", err)
	}
	return path, nil
}

// removeCgroup removes a cgroup tree the probe created, bottom-up. A
// process still inside can only be a self-test helper; it is killed.
func removeCgroup(path string) error {
	if err := cgroups.RemoveTree(path); err != nil {
		return fmt.Errorf("remove temporary cgroup: %w", err)
	}
	return nil
}

// staleAfter is the age past which a temporary cgroup can only be a
// leftover: a probe runs for seconds (a self-test helper at most
// helperTimeout).
const staleAfter = 10 * time.Minute

// removeStale removes the temporary cgroups that a probe killed before its
// cleanup (an agent SIGKILLed during its start-up probe) left under parent:
// those untouched for staleAfter with no process left in them. A probe
// running now is never older; one that cannot be removed is left alone
// (the sweep must not fail the probe). It returns the paths removed.
func removeStale(parent string, now time.Time) []string {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), CgroupPrefix) {
			continue
		}
		path := filepath.Join(parent, e.Name())
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < staleAfter {
			continue
		}
		events, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
		if err != nil || !bytes.Contains(events, []byte("populated 0")) {
			continue
		}
		if cgroups.RemoveTree(path) == nil {
			removed = append(removed, path)
		}
	}
	return removed
}
