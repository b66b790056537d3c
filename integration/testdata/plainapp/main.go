// Command plainapp is an HTTP service that knows nothing of lameduck, for the
// end-to-end tests of `lameduck prestop` in plain mode. It stands for an app
// in any language: it listens, registers itself in Consul through the
// agent's HTTP API (no health check, so Consul lists it as passing until it
// is deregistered), serves POST /work in a few milliseconds, and on SIGTERM
// shuts its server down gracefully and exits 0. It never deregisters
// itself: that is left to the operator, here lameduck prestop.
//
//	plainapp -listen 127.0.0.1:8080 -consul 127.0.0.1:8500 -service web -id web-1
//
// -idle-timeout closes keep-alive connections that carry no request for that
// long, as most production servers do (nginx, Node, Envoy). lameduck prestop
// does not need it where the kernel tells idle connections from busy ones
// (sock_diag); where it does not, every established connection counts as
// busy, and a draining app needs it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	consul := flag.String("consul", "127.0.0.1:8500", "Consul agent's HTTP address")
	service := flag.String("service", "web", "service name to register")
	id := flag.String("id", "", "Consul service ID (default service-port)")
	work := flag.Duration("work", 3*time.Millisecond, "how long each request takes")
	idle := flag.Duration("idle-timeout", 0, "close keep-alive connections idle this long (0: never, net/http's default)")
	grace := flag.Duration("shutdown-timeout", 20*time.Second, "how long Shutdown may take on SIGTERM")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("plainapp: ")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	if *id == "" {
		*id = fmt.Sprintf("%s-%d", *service, addr.Port)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       *idle,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			t := time.NewTimer(*work)
			defer t.Stop()
			select {
			case <-t.C:
				fmt.Fprintln(w, "ok")
			case <-r.Context().Done():
			}
		}),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	if err := register(*consul, *service, *id, addr); err != nil {
		log.Fatal(err)
	}
	log.Printf("serving %s as %s, registered in consul %s", addr, *id, *consul)

	select {
	case s := <-sig:
		log.Printf("%s: shutting down", s)
	case err := <-served:
		log.Fatalf("serve: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
		os.Exit(1)
	}
	log.Printf("stopped")
}

// register puts the instance in the Consul agent's catalogue, as an app or
// its deployment tooling would without lameduck.
func register(consul, service, id string, addr *net.TCPAddr) error {
	body, _ := json.Marshal(map[string]any{
		"ID": id, "Name": service, "Address": addr.IP.String(), "Port": addr.Port,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+consul+"/v1/agent/service/register", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("register in consul: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New("register in consul: " + resp.Status)
	}
	return nil
}
