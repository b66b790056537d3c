package integration

// A TCP fault proxy between lameduck and a registry server: Shopify's
// toxiproxy, run in the test's own process (no toxiproxy server, no API
// calls), one proxy per port the client dials.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// faultProxy stands between a client and one registry server. Every method
// is safe for concurrent use and takes effect at once on every port.
type faultProxy struct {
	t       *testing.T
	addr    string // what the client is given: host:port of the first proxy
	mu      sync.Mutex
	proxies []*toxiproxy.Proxy
	slowed  bool
}

// newFaultProxy starts a proxy in front of the Consul agent at upstream
// (its HTTP port), or, with nacos, in front of the Nacos server at upstream
// and its gRPC port 1000 above (the SDK derives one from the other, so the
// proxy's two ports keep the same gap). It is stopped when the test ends.
func newFaultProxy(t *testing.T, upstream string, nacos bool) *faultProxy {
	t.Helper()
	host, portStr, err := net.SplitHostPort(upstream)
	if err != nil {
		t.Fatalf("fault proxy: upstream %q: %v", upstream, err)
	}
	up, _ := strconv.Atoi(portStr)
	offsets := []int{0}
	if nacos {
		offsets = append(offsets, 1000)
	}
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := &faultProxy{t: t}
	// freePortSet's ports were free when it looked; another process may
	// bind one before the proxy does, so a set that is taken by then is
	// given up for the next.
	var base int
	for try := 0; ; try++ {
		base = freePortSet(t, offsets...)
		err := p.listen(server, base, offsets, host, up)
		if err == nil {
			break
		}
		p.close()
		p.proxies = nil
		if !errors.Is(err, syscall.EADDRINUSE) || try == 2 {
			t.Fatalf("fault proxy: %v", err)
		}
		t.Logf("fault proxy: %v; trying other ports", err)
	}
	p.addr = e2eEndpoint(base)
	t.Cleanup(p.close)
	return p
}

// listen starts one proxy per offset, on base+offset, to host's up+offset.
func (p *faultProxy) listen(server *toxiproxy.ApiServer, base int, offsets []int, host string, up int) error {
	for _, off := range offsets {
		name := fmt.Sprintf("%s-%d", strings.ReplaceAll(p.t.Name(), "/", "-"), off)
		px := toxiproxy.NewProxy(server, name, e2eEndpoint(base+off), net.JoinHostPort(host, strconv.Itoa(up+off)))
		if err := px.Start(); err != nil {
			return fmt.Errorf("listen on %s for %s: %w", px.Listen, px.Upstream, err)
		}
		p.proxies = append(p.proxies, px)
	}
	return nil
}

func (p *faultProxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, px := range p.proxies {
		px.Stop()
	}
}

// cut breaks the link the way a dead server or a reset network does: the
// connections through the proxy are closed, and new ones are refused.
func (p *faultProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, px := range p.proxies {
		px.Stop()
	}
}

// heal undoes cut: the proxy listens again on the same ports (free again
// at once: Go listens with SO_REUSEADDR).
func (p *faultProxy) heal() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, px := range p.proxies {
		if err := px.Start(); err != nil && !errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
			p.t.Errorf("fault proxy: listen again on %s: %v", px.Listen, err)
		}
	}
}

// slow delays every chunk of data by d in each direction given ("upstream":
// client to server; "downstream": server to client), on every port, until
// unslow.
func (p *faultProxy) slow(d time.Duration, streams ...string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, px := range p.proxies {
		for _, s := range streams {
			body := fmt.Sprintf(`{"name":"slow-%s","type":"latency","stream":%q,"attributes":{"latency":%d}}`, s, s, d.Milliseconds())
			if _, err := px.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
				p.t.Fatalf("fault proxy: add latency %v %s on %s: %v", d, s, px.Listen, err)
			}
		}
	}
	p.slowed = true
}

// unslow removes what slow added.
func (p *faultProxy) unslow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.slowed {
		return
	}
	p.slowed = false
	for _, px := range p.proxies {
		px.Toxics.ResetToxics(context.Background())
	}
}
