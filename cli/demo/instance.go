// Package demo is lameduck's show-and-tell: three instances of a small HTTP
// service behind a registry, a load generator that discovers them through the
// registry's watch, and two ways of taking an instance down under load.
//
// It serves `lameduck demo` and the integration tests, which run the same
// scenario against real registries; it lives outside internal/ so that
// integration/ may import it, and is not a stable API.
package demo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
	"github.com/lameduck/lameduck/registry"
)

// Instance is one running instance of the demo service.
type Instance struct {
	Inst    registry.Instance
	Tracker *drain.Tracker
	Server  *http.Server

	serveErr chan error
}

// WorkTime draws a request's service time: mostly a few milliseconds, some
// tens, and a few up to 300ms, like a typical API.
func WorkTime(r *rand.Rand) time.Duration {
	switch p := r.Float64(); {
	case p < 0.85:
		return time.Duration(1+r.IntN(5)) * time.Millisecond
	case p < 0.98:
		return time.Duration(10+r.IntN(40)) * time.Millisecond
	default:
		return time.Duration(200+r.IntN(100)) * time.Millisecond
	}
}

// StartInstance listens on 127.0.0.1 on a free port and serves the demo
// handler behind the lameduck middleware. It does not register.
func StartInstance(service string, n int) (*Instance, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: listen on 127.0.0.1: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	t := &drain.Tracker{}
	mw, err := httpdrain.Middleware(t)
	if err != nil {
		ln.Close()
		return nil, err
	}
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(uint64(port), uint64(n)))
	work := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := WorkTime(rng)
		mu.Unlock()
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Instance", strconv.Itoa(n))
		_, _ = w.Write([]byte("ok\n"))
	})
	in := &Instance{
		Inst: registry.Instance{
			Service:  service,
			ID:       fmt.Sprintf("%s-%d", service, port),
			Address:  "127.0.0.1",
			Port:     port,
			Tags:     []string{"demo"},
			Metadata: map[string]string{"instance": strconv.Itoa(n)},
		},
		Tracker:  t,
		Server:   &http.Server{Handler: mw(work), ReadHeaderTimeout: 5 * time.Second},
		serveErr: make(chan error, 1),
	}
	go func() { in.serveErr <- in.Server.Serve(ln) }()
	return in, nil
}

// Shutdown stops the server gracefully and reports a serving error, if any.
func (in *Instance) Shutdown(ctx context.Context) error {
	err := in.Server.Shutdown(ctx)
	if serr := <-in.serveErr; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
