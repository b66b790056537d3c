// Command demosvc is the service the proof harness (integration/proof)
// restarts under load. It serves three endpoints on 127.0.0.1:
//
//	POST /work?ms=N   answers "ok" after N milliseconds (0-10000)
//	GET  /stream      a Server-Sent Events stream: a tick every 200ms until
//	                  the instance goes offline, then "event: goodbye" and
//	                  the end of the response, so the client reopens it on
//	                  another instance
//	GET  /healthz     200 "ok"
//
// It runs in one of three modes, chosen with -mode:
//
//	library  links lameduck: lameduck.App registers the instance in -registry
//	         once /healthz answers, and on SIGTERM deregisters, waits for the
//	         registry's confirmation, drains (httpdrain counts requests; the
//	         stream is long-lived and says goodbye when draining starts) and
//	         stops. Every protocol event is printed on stdout as one JSON
//	         line, for the harness's timeline.
//	plain    knows nothing of lameduck or of any registry: on SIGTERM it says
//	         goodbye on its streams and shuts its server down gracefully
//	         (http.Server.Shutdown), then exits 0. Someone else registers it.
//	naive    like plain, but exits at once on SIGTERM, as a process that does
//	         nothing about shutdown does.
//
// All modes close keep-alive connections idle for -idle-timeout (5s, as
// Node's server does), so a drain that counts connections can finish.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
	"github.com/lameduck/lameduck/registry"
)

const maxWork = 10 * time.Second

func main() {
	mode := flag.String("mode", "plain", "library, plain or naive")
	listen := flag.String("listen", "127.0.0.1:0", "HTTP address (loopback)")
	service := flag.String("service", "", "service name (library mode)")
	regURL := flag.String("registry", "", "registry URL (library mode), e.g. consul://127.0.0.1:8500")
	adminAddr := flag.String("admin", "", "lameduck admin endpoint address (library mode); empty turns it off")
	budget := flag.Duration("budget", 25*time.Second, "lameduck's deadline budget (library mode)")
	idle := flag.Duration("idle-timeout", 5*time.Second, "close keep-alive connections idle this long")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	if flag.NArg() > 0 {
		fail("unexpected argument %q; every input is a flag", flag.Arg(0))
	}
	switch *mode {
	case "library":
		if *service == "" || *regURL == "" {
			fail("-mode library needs -service and -registry")
		}
	case "plain", "naive":
	default:
		fail("-mode %q: want library, plain or naive", *mode)
	}
	if *idle <= 0 {
		fail("-idle-timeout %v: want a positive duration", *idle)
	}
	host, _, err := net.SplitHostPort(*listen)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		fail("-listen %q: want a loopback host:port such as 127.0.0.1:0", *listen)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("listen: %v", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: *idle}

	switch *mode {
	case "library":
		os.Exit(runLibrary(ln, srv, *service, *regURL, *adminAddr, *budget))
	default:
		os.Exit(runPlain(ln, srv, *mode == "naive"))
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demosvc: "+format+"\n", args...)
	os.Exit(lameduck.ExitBadInput)
}

// handler serves the three endpoints. goodbye is closed when the instance
// goes offline: streams say goodbye and end.
func handler(goodbye <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /work", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		d := time.Duration(ms) * time.Millisecond
		if err != nil || d < 0 || d > maxWork {
			http.Error(w, "demosvc: want ms between 0 and 10000", http.StatusBadRequest)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "demosvc: streaming unsupported", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-goodbye:
				_, _ = io.WriteString(w, "event: goodbye\ndata: this instance is going offline; reconnect elsewhere\n\n")
				f.Flush()
				return
			case <-r.Context().Done():
				return
			default:
			}
			if _, err := fmt.Fprintf(w, "data: %d\n\n", n); err != nil {
				return
			}
			f.Flush()
			select {
			case <-tick.C:
			case <-goodbye:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// runPlain serves until SIGTERM or SIGINT. naive exits at once; otherwise
// streams get their goodbye and the server shuts down gracefully.
func runPlain(ln net.Listener, srv *http.Server, naive bool) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	goodbye := make(chan struct{})
	srv.Handler = handler(goodbye)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-sig:
	case err := <-served:
		fmt.Fprintf(os.Stderr, "demosvc: serve: %v\n", err)
		return lameduck.ExitFailed
	}
	if naive {
		return lameduck.ExitOK
	}
	close(goodbye)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "demosvc: shutdown: %v\n", err)
		return lameduck.ExitFailed
	}
	return lameduck.ExitOK
}

// event is one protocol event as printed on stdout.
type event struct {
	UnixNano  int64  `json:"t_unix_ns"`
	Kind      string `json:"kind"`
	Phase     string `json:"phase"`
	Registry  string `json:"registry,omitempty"`
	LatencyNS int64  `json:"latency_ns,omitempty"`
	InFlight  int64  `json:"in_flight"`
	Err       string `json:"err,omitempty"`
}

func runLibrary(ln net.Listener, srv *http.Server, service, regURL, adminAddr string, budget time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	reg, err := adapters.Open(ctx, regURL, adapters.CredentialsFromEnv())
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demosvc: %v\n", err)
		return lameduck.ExitBadInput
	}
	defer reg.Close()
	addr := ln.Addr().(*net.TCPAddr)
	inst := registry.Instance{
		Service: service, ID: fmt.Sprintf("%s-%d", service, addr.Port),
		Address: addr.IP.String(), Port: addr.Port,
	}
	var outMu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e drain.Event) {
		ev := event{
			UnixNano: e.Time.UnixNano(), Kind: e.Kind.String(), Phase: e.Phase.String(),
			Registry: e.Registry, LatencyNS: int64(e.Latency), InFlight: e.InFlight,
		}
		if e.Err != nil {
			ev.Err = e.Err.Error()
		}
		outMu.Lock()
		defer outMu.Unlock()
		_ = enc.Encode(ev)
	}
	healthURL := "http://" + addr.String() + "/healthz"
	app, err := lameduck.New(inst, []registry.Registry{reg},
		lameduck.WithAdmin(adminAddr, ""),
		lameduck.WithReady(func(ctx context.Context) error { return healthy(ctx, healthURL) }),
		lameduck.WithDrain(drain.WithBudget(budget)),
		lameduck.WithStopHook("http", srv.Shutdown),
		lameduck.WithEventHook(emit),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demosvc: %v\n", err)
		return lameduck.ExitBadInput
	}
	mw, err := httpdrain.Middleware(app.Tracker())
	if err != nil {
		fmt.Fprintf(os.Stderr, "demosvc: %v\n", err)
		return lameduck.ExitBadInput
	}
	srv.Handler = mw(handler(app.Tracker().Draining()))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	err = app.Run(context.Background())
	if serr := <-served; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demosvc: %v\n", err)
	}
	_ = reg.Close()
	return lameduck.ExitCode(err)
}

// healthy passes when url answers 2xx, over a connection that is closed
// afterwards, so it never lingers as an idle keep-alive connection.
func healthy(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("demosvc: %s answered %s", url, resp.Status)
	}
	return nil
}
