package consumerid

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestID(t *testing.T) {
	t.Parallel()
	proxy := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	cases := []struct {
		name string
		r    Resolver
		peer string
		hdr  http.Header
		want string
	}{
		{name: "remote ip", peer: "10.0.0.7:4242", want: "10.0.0.7"},
		{name: "ipv6", peer: "[::1]:80", want: "::1"},
		{name: "mapped ipv4", peer: "[::ffff:10.0.0.7]:80", want: "10.0.0.7"},
		{name: "xff ignored from an untrusted peer", peer: "10.0.0.7:1", hdr: http.Header{"X-Forwarded-For": {"1.2.3.4"}}, want: "10.0.0.7"},
		{name: "xff from a trusted proxy", r: Resolver{Trusted: proxy}, peer: "10.1.0.5:1", hdr: http.Header{"X-Forwarded-For": {"6.6.6.6, 10.0.0.9, 10.1.0.4"}}, want: "10.0.0.9"},
		{name: "xff over several headers", r: Resolver{Trusted: proxy}, peer: "10.1.0.5:1", hdr: http.Header{"X-Forwarded-For": {"10.0.0.8", "10.1.0.3"}}, want: "10.0.0.8"},
		{name: "broken xff names the proxy", r: Resolver{Trusted: proxy}, peer: "10.1.0.5:1", hdr: http.Header{"X-Forwarded-For": {"nope"}}, want: "10.1.0.5"},
		{name: "trusted proxy without xff", r: Resolver{Trusted: proxy}, peer: "10.1.0.5:1", want: "10.1.0.5"},
		{name: "identity header", r: Resolver{Header: "X-Client"}, peer: "10.0.0.7:1", hdr: http.Header{"X-Client": {"billing"}}, want: "billing"},
		{name: "identity header missing", r: Resolver{Header: "X-Client"}, peer: "10.0.0.7:1", want: "10.0.0.7"},
		{name: "identity header cleaned and cut", r: Resolver{Header: "X-Client"}, peer: "1.1.1.1:1", hdr: http.Header{"X-Client": {"a b\n" + strings.Repeat("x", 100)}}, want: ("a_b_" + strings.Repeat("x", 100))[:MaxLen]},
		{name: "not an address", peer: "pipe", want: "pipe"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.r.ID(tc.peer, func(n string) []string { return tc.hdr[n] }); got != tc.want {
				t.Errorf("ID(%q): want %q, got %q", tc.peer, tc.want, got)
			}
		})
	}
}
