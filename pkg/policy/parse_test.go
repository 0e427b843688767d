package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParsePortList(t *testing.T) {
	linkerd := ListSyntax{Ranges: true}
	tests := []struct {
		name    string
		value   string
		syn     ListSyntax
		all     bool
		want    []uint16
		errText string // substring of the error; "" means no error
		over    bool   // error wraps ErrOverLimit
	}{
		{name: "empty", value: "", want: nil},
		{name: "blank", value: " \t ", want: nil},
		{name: "only commas", value: ",,", want: nil},
		{name: "wildcard", value: " * ", syn: ListSyntax{Wildcard: true}, all: true},
		{name: "wildcard not allowed", value: "*", errText: `"*" must stand alone`},
		{name: "leading zeros", value: "080", want: []uint16{80}},
		{name: "plus sign", value: "+80", errText: "not a number"},
		{name: "hex", value: "0x50", errText: "not a number"},
		{name: "inner space", value: "8 0", errText: "not a number"},
		{name: "ranges overlap", value: "3306-3307,3307, 25", syn: linkerd, want: []uint16{25, 3306, 3307}},
		{name: "range spaces", value: " 80 - 82 ", syn: linkerd, want: []uint16{80, 81, 82}},
		{name: "range single", value: "80-80", syn: linkerd, want: []uint16{80}},
		{name: "range to 65535", value: "65500-65535", syn: linkerd, want: portRange(65500, 65535)},
		{name: "range over limit", value: "1-100,50-150", syn: linkerd, errText: "150 ports", over: true},
		{name: "wide duplicate ranges", value: "1000-1300,1000-1300", syn: linkerd, errText: "301 ports", over: true},
		{
			name:  "many duplicates fit",
			value: strings.Repeat("1-30,", 10), syn: linkerd, want: portRange(1, 30),
		},
		{name: "everything", value: "1-65535", syn: linkerd, errText: "65535 ports", over: true},
		{name: "double dash", value: "1-2-3", syn: linkerd, errText: "not a number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePortList(tc.value, tc.syn)
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) || errors.Is(err, ErrOverLimit) != tc.over {
					t.Fatalf("error %v, want one containing %q (over limit %v)", err, tc.errText, tc.over)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.All != tc.all || !slices.Equal(got.Ports, tc.want) {
				t.Fatalf("got %+v, want all=%v %v", got, tc.all, tc.want)
			}
		})
	}
}

func TestParseCIDRList(t *testing.T) {
	tests := []struct {
		name    string
		value   string
		syn     ListSyntax
		v4, v6  []string
		errText string
	}{
		{name: "masked and sorted", value: "10.9.0.0/16,10.1.2.3/8,192.168.0.0/16", v4: []string{"10.0.0.0/8", "10.9.0.0/16", "192.168.0.0/16"}},
		{name: "same address two lengths", value: "10.0.0.0/16,10.0.0.0/8", v4: []string{"10.0.0.0/8", "10.0.0.0/16"}},
		{name: "v4 mapped stays v6", value: "::ffff:10.0.0.0/104", v6: []string{"::ffff:10.0.0.0/104"}},
		{name: "zone", value: "fe80::1%eth0/64", errText: "not a CIDR"},
		{name: "bare address rejected", value: "10.0.0.1", errText: "no '/'"},
		{name: "bare address accepted", value: "10.0.0.1, fd10::1", syn: ListSyntax{BareIPs: true}, v4: []string{"10.0.0.1/32"}, v6: []string{"fd10::1/128"}},
		{name: "bare garbage", value: "host.example", syn: ListSyntax{BareIPs: true}, errText: "not a CIDR"},
		{name: "default route", value: "0.0.0.0/0", v4: []string{"0.0.0.0/0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCIDRList(tc.value, tc.syn)
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want one containing %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.V4, prefixes(tc.v4...)) || !slices.Equal(got.V6, prefixes(tc.v6...)) {
				t.Fatalf("got %v %v, want %v %v", got.V4, got.V6, tc.v4, tc.v6)
			}
		})
	}
}
