package podfile

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, err string
		pods          int
	}{
		{"ok", `{"pods":[{"name":"a","cgroup":"x","ip":"10.0.0.1"},{"name":"b","cgroup":"y","capture":false}]}`, "", 2},
		{"empty", `{"pods":[]}`, "", 0},
		{"unknown field", `{"pods":[{"name":"a","cgroups":"x"}]}`, `unknown field "cgroups"`, 0},
		{"not json", `pods: []`, "decode pod file", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Pods) != tt.pods {
				t.Fatalf("%d pods, want %d", len(f.Pods), tt.pods)
			}
		})
	}
}

func TestResolveKeepsGoodEntries(t *testing.T) {
	root := t.TempDir() // not cgroup2: every cgroup lookup fails
	f := &File{Pods: []Entry{
		{Name: "no-cgroup"},
		{Name: "bad-ip", Cgroup: "x", IP: "nope"},
		{Name: "two-v4", Cgroup: "x", IPs: []string{"10.0.0.1", "10.0.0.2"}},
		{Name: "not-cgroup2", Cgroup: root},
	}}
	pods, err := f.Resolve(root)
	if len(pods) != 0 {
		t.Fatalf("pods = %v", pods)
	}
	for _, want := range []string{"pod no-cgroup: \"cgroup\" is empty", "pod not-cgroup2", "not on a cgroup v2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}

func TestEntryAddresses(t *testing.T) {
	tests := []struct {
		name   string
		e      Entry
		v4, v6 string
		err    string
	}{
		{"ipv4", Entry{IP: "10.250.0.2"}, "10.250.0.2", "", ""},
		{"ipv6 only", Entry{IP: "fd00:250::2"}, "", "fd00:250::2", ""},
		{"dual stack", Entry{IPs: []string{"10.250.0.2", "fd00:250::2"}}, "10.250.0.2", "fd00:250::2", ""},
		{"ip and ips", Entry{IP: "fd00:250::2", IPs: []string{"10.250.0.2"}}, "10.250.0.2", "fd00:250::2", ""},
		{"v4-mapped is IPv4", Entry{IP: "::ffff:10.250.0.2"}, "10.250.0.2", "", ""},
		{"two IPv6", Entry{IPs: []string{"fd00::1", "fd00::2"}}, "", "", "two IPv6 addresses"},
		{"garbage", Entry{IPs: []string{"10.0.0.300"}}, "", "", `"10.0.0.300" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.e.addresses(policy.Pod{})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := addrString(p.IPv4); got != tt.v4 {
				t.Errorf("IPv4 = %q, want %q", got, tt.v4)
			}
			if got := addrString(p.IPv6); got != tt.v6 {
				t.Errorf("IPv6 = %q, want %q", got, tt.v6)
			}
		})
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func TestEntryDNS(t *testing.T) {
	on, off := true, false
	tests := []struct {
		name string
		e    Entry
		d    Defaults
		want policy.DNS
		err  string
	}{
		{"nothing", Entry{}, Defaults{}, policy.DNS{}, ""},
		{"asked", Entry{DNSCapture: &on, Nameservers: []string{"10.96.0.10", "fd00::a"}}, Defaults{}, policy.DNS{Capture: true, Nameservers: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}}, ""},
		{"agent default", Entry{Nameservers: []string{"10.96.0.10"}}, Defaults{DNSCapture: true}, policy.DNS{Capture: true, Nameservers: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}, ""},
		{"entry off beats default", Entry{DNSCapture: &off, Nameservers: []string{"10.96.0.10"}}, Defaults{DNSCapture: true}, policy.DNS{}, ""},
		{"capture all", Entry{DNSCapture: &on}, Defaults{DNSAll: true}, policy.DNS{Capture: true, All: true}, ""},
		{"default without nameservers: none", Entry{}, Defaults{DNSCapture: true}, policy.DNS{}, ""},
		{"asked without nameservers", Entry{DNSCapture: &on}, Defaults{}, policy.DNS{}, "without \"nameservers\""},
		{"bad nameserver", Entry{DNSCapture: &on, Nameservers: []string{"dns.example"}}, Defaults{}, policy.DNS{}, "not an IP address"},
		{"four nameservers", Entry{DNSCapture: &on, Nameservers: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}}, Defaults{}, policy.DNS{}, "at most 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.e.dns(policy.Pod{Capture: true}, tt.d)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(p.DNS, tt.want) {
				t.Errorf("DNS = %+v (%v), want %+v", p.DNS, err, tt.want)
			}
		})
	}
}
