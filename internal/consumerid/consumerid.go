// Package consumerid names the consumer that sent a request, for the late
// traffic attribution of pkg/httpdrain and pkg/grpcdrain: the one home of
// that rule.
package consumerid

import (
	"net"
	"net/netip"
	"strings"
)

// MaxLen bounds an ID taken from a header, so that what a client sends
// cannot grow the attribution's memory (drain.MaxTracked IDs are kept).
const MaxLen = 64

// Resolver names consumers. The zero value names each by its remote IP.
type Resolver struct {
	// Header, when set, names the consumer by that header's value (a
	// consumer identity header such as X-Client-Name) when a request
	// carries it.
	Header string
	// Trusted lists the proxies whose X-Forwarded-For is believed: a
	// request from one of them is named by the rightmost address in
	// X-Forwarded-For that is not itself a trusted proxy.
	Trusted []netip.Prefix
}

// ID names the consumer of a request from peer (an address such as
// net/http's RemoteAddr, "ip:port", or a bare IP), whose headers get
// returns by canonical name.
func (r *Resolver) ID(peer string, get func(name string) []string) string {
	if r.Header != "" {
		if v := get(r.Header); len(v) > 0 && v[0] != "" {
			return clean(v[0])
		}
	}
	ip := peerIP(peer)
	if !ip.IsValid() {
		return clean(peer)
	}
	if !r.trusted(ip) {
		return ip.String()
	}
	hops := get("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return ip.String() // a forged or broken header: name the proxy
			}
			hop = hop.Unmap()
			if !r.trusted(hop) {
				return hop.String()
			}
		}
	}
	return ip.String()
}

func (r *Resolver) trusted(ip netip.Addr) bool {
	for _, p := range r.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// peerIP parses "ip:port" or a bare IP; the zero Addr if neither.
func peerIP(peer string) netip.Addr {
	if ap, err := netip.ParseAddrPort(peer); err == nil {
		return ap.Addr().Unmap()
	}
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	ip, err := netip.ParseAddr(peer)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

// clean keeps printable ASCII and cuts at MaxLen, so an ID is safe in a
// log line, a metric label and a JSON report.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e {
			return '_'
		}
		return r
	}, s)
	if len(s) > MaxLen {
		s = s[:MaxLen]
	}
	return s
}
