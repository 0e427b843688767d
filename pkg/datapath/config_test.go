package datapath

import (
	"strings"
	"testing"
)

// Root as the proxy identity would exempt every root process from capture.
func TestValidateRefusesRootProxy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		uid, gid uint32
		says     string
	}{
		{"uid 0", 0, 1337, "proxy uid 0"},
		{"gid 0", 1337, 0, "proxy gid 0"},
	} {
		c := IstioDefaults()
		c.CgroupPath = "/sys/fs/cgroup/x"
		c.ProxyUID, c.ProxyGID = tc.uid, tc.gid
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: Validate() = %v, want an error saying %q", tc.name, err, tc.says)
		}
	}
}
