package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
)

// structFields returns the member names of t when it is a struct (through
// typedefs and qualifiers), none otherwise.
func structFields(t btf.Type) []string {
	s, ok := btf.UnderlyingType(t).(*btf.Struct)
	if !ok {
		return nil
	}
	var names []string
	for _, m := range s.Members {
		if m.Name != "" && !strings.HasPrefix(m.Name, "pad") {
			names = append(names, m.Name)
		}
	}
	return names
}

// `bpftool map dump pinned` prints every pinned map whose key or value is a
// struct with its field names (BTF map definitions): the datapath's state
// can be read without sockbridge. Every such map is checked, found from
// the object itself; an empty one gets a zero entry first (the test's own
// datapath), so there is something to print. Socket storage cannot be
// dumped by any tool (no key to walk); `sockbridge maps` lists it.
func TestBpftoolDumpShowsFieldNames(t *testing.T) {
	// Every feature on, so that every map of the object is created.
	e := newEnvWith(t, func(c *datapath.Config) { c.Splice, c.Inbound = true, true })
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	out, in := outboundAll, inboundAll
	out.ExcludePorts = []uint16{9999}
	out.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.250.9.0/24")}
	out.IncludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}
	in.ExcludePorts = []uint16{9998}
	if err := e.dp.UpsertPod(datapath.Pod{CgroupID: a.id, IPv4: podAIP, Capture: true, Outbound: out, Inbound: in}); err != nil {
		t.Fatal(err)
	}
	// A live spliced flow puts sockets in sb_sockhash and the app's cgroup
	// in sb_cg_cache.
	h := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{bin.sbpeer, "hold", "-addr", serverAddr(), "-for", "30s"}})
	if !h.WaitOutput("connected", 10*time.Second) {
		t.Fatalf("hold: %s", h.Output())
	}

	spec, err := datapath.Spec()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		fields := append(structFields(ms.Key), structFields(ms.Value)...)
		if len(fields) == 0 {
			continue // plain integers: nothing to name
		}
		pin := filepath.Join(datapath.MapDir(e.pinDir), name)
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("map %s not pinned: %v", name, err)
			continue
		}
		if ms.Type == ebpf.SkStorage {
			continue
		}
		if info := bpftoolMap(t, pin); info.BTFID == 0 {
			// The kernel takes no BTF for socket maps (map_check_no_btf):
			// bpftool prints their keys as bytes. Any other map without
			// BTF is a defect.
			if ms.Type != ebpf.SockHash {
				t.Errorf("map %s (%s) was created without BTF", name, ms.Type)
			}
			continue
		}
		dump := bpftoolDump(t, pin)
		if dump == "[]" {
			m, err := ebpf.LoadPinnedMap(pin, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = m.Put(make([]byte, m.KeySize()), make([]byte, m.ValueSize()))
			m.Close()
			if err != nil {
				t.Fatalf("put a zero entry into %s: %v", name, err)
			}
			dump = bpftoolDump(t, pin)
		}
		var entries []struct {
			Formatted json.RawMessage `json:"formatted"`
		}
		if err := json.Unmarshal([]byte(dump), &entries); err != nil || len(entries) == 0 {
			t.Errorf("bpftool map dump pinned %s: %v, %s", name, err, dump)
			continue
		}
		for _, f := range fields {
			if !strings.Contains(string(entries[0].Formatted), `"`+f+`"`) {
				t.Errorf("bpftool map dump pinned %s: no field %q in %s", name, f, entries[0].Formatted)
			}
		}
		checked++
	}
	if checked < 7 {
		t.Errorf("checked %d maps, want every struct-typed map with BTF (>= 7)", checked)
	}
}

func bpftoolDump(t *testing.T, pin string) string {
	t.Helper()
	out, err := exec.Command("bpftool", "map", "dump", "pinned", pin, "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v\n%s", pin, err, out)
	}
	return strings.TrimSpace(string(out))
}
