package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// makePins creates the named files (and their directories) below dir.
func makePins(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, n)
		if strings.HasSuffix(n, "/") {
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// What an agent finds in its pin directory decides what it does, before
// it touches anything: take over its own layout, switch from layout 1, or
// refuse in one line.
func TestInspectLayout(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	newer := fmt.Sprintf("v%d/", LayoutVersion+1)
	for _, tc := range []struct {
		name    string
		pins    []string
		layout1 bool
		refuse  []string // substrings of the refusal, nil: accepted
	}{
		{name: "nothing pinned"},
		{name: "this layout", pins: []string{"v2/sb_pods", "links/connect4", "links/inbound/42"}},
		{name: "layout 1's links", pins: []string{"links/connect4_redirect", "links/sockops_track"}, layout1: true},
		{name: "a switch half done", pins: []string{"v2/sb_pods", "v2/legacy/", "links/getsockopt", "links/connect4_redirect"}, layout1: true},
		{name: "newer layout", pins: []string{"v2/sb_pods", newer},
			refuse: []string{"layout " + strings.TrimSuffix(newer, "/"), fmt.Sprintf("this agent's v%d", LayoutVersion), "downgrade", "sockbridge uninstall --bpffs-dir"}},
		{name: "unreleased version", pins: []string{"v1/"}, refuse: []string{"layout v1", "no released sockbridge wrote", "sockbridge uninstall"}},
		{name: "unreleased flat maps", pins: []string{"sb_listeners", "links/connect4"}, refuse: []string{"sb_listeners", "not layout 1's", "sockbridge uninstall"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pins")
			if tc.pins != nil {
				makePins(t, dir, tc.pins...)
			}
			p, err := inspectLayout(dir, spec)
			if tc.refuse != nil {
				if err == nil {
					t.Fatalf("accepted %v", tc.pins)
				}
				msg := err.Error()
				for _, want := range tc.refuse {
					if !strings.Contains(msg, want) {
						t.Errorf("refusal %q does not say %q", msg, want)
					}
				}
				if strings.Contains(msg, "\n") {
					t.Errorf("refusal is more than one line: %q", msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if p.layout1() != tc.layout1 {
				t.Errorf("layout1() = %v, want %v", p.layout1(), tc.layout1)
			}
		})
	}
}

// The hooks attach (and switch) in an order that never leaves a connection
// half handled: what answers a captured connection before what hands it
// over, and that before what captures. Removal goes the other way round.
func TestHookOrder(t *testing.T) {
	for _, before := range [][2]string{
		{"getsockopt", "sockops"}, // the new getsockopt reads the old sockops' state, not the other way round
		{"sockops", "connect4"},
		{"sockops", "connect6"},
		{"getpeername4", "connect4"},
		{"getpeername6", "connect6"},
		{"recvmsg4", "connect4"}, // connect's DNS branch captures connected UDP
		{"recvmsg6", "connect6"},
		{"recvmsg4", "sendmsg4"},
		{"recvmsg6", "sendmsg6"},
	} {
		if hookIndex(before[0]) >= hookIndex(before[1]) {
			t.Errorf("%s attaches after %s", before[0], before[1])
		}
	}
	for old, h := range layout1Links {
		if hookIndex(h) == len(hooks) {
			t.Errorf("layout 1's link %s maps to unknown hook %s", old, h)
		}
	}
}

// Uninstall removes the links that start capturing first, whatever layout
// pinned them, then the inbound links.
func TestUninstallLinkOrder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	makePins(t, dir, "links/getsockopt", "links/sockops", "links/connect4", "links/sendmsg4", "links/recvmsg4",
		"links/getpeername4_restore", "links/connect6-new", "links/inbound/7", "links/somethingnew")
	own := &pins{}
	var foreign []string
	if err := own.addLinks(filepath.Join(dir, linksDir), &foreign); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range own.links {
		rel, _ := filepath.Rel(filepath.Join(dir, linksDir), l)
		got = append(got, rel)
	}
	want := []string{"somethingnew", "sendmsg4", "connect6-new", "connect4", "recvmsg4", "getpeername4_restore", "sockops", "getsockopt", "inbound/7"}
	if !slices.Equal(got, want) || len(foreign) != 0 {
		t.Errorf("removal order %v (foreign %v), want %v", got, foreign, want)
	}
}
