// Command app is an HTTP + gRPC service that goes offline the lameduck way:
//
//	go run ./examples/app -registry consul://127.0.0.1:8500 -service web
//
// On SIGTERM (or POST http://127.0.0.1:9901/offline) it deregisters, waits for
// the registry's confirmation, drains, then stops both servers and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/grpcdrain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
	"github.com/lameduck/lameduck/registry"
)

func main() {
	regURL := flag.String("registry", "memory://", "registry URL")
	service := flag.String("service", "web", "service name")
	httpAddr := flag.String("http", "127.0.0.1:8080", "HTTP address")
	grpcAddr := flag.String("grpc", "127.0.0.1:9090", "gRPC address")
	adminAddr := flag.String("admin", "127.0.0.1:9901", "admin endpoint address")
	budget := flag.Duration("budget", 25*time.Second, "the offline's one deadline (the pod's grace period minus a margin)")
	flag.Parse()

	reg, err := adapters.Open(context.Background(), *regURL, adapters.CredentialsFromEnv())
	check(err)
	defer reg.Close()
	hl, err := net.Listen("tcp", *httpAddr)
	check(err)
	gl, err := net.Listen("tcp", *grpcAddr)
	check(err)
	port := hl.Addr().(*net.TCPAddr).Port
	inst := registry.Instance{Service: *service, ID: fmt.Sprintf("%s-%d", *service, port), Address: "127.0.0.1", Port: port}

	var grpcSrv *grpc.Server
	httpSrv := &http.Server{ReadHeaderTimeout: 5 * time.Second}
	app, err := lameduck.New(inst, []registry.Registry{reg},
		lameduck.WithAdmin(*adminAddr, os.Getenv("LAMEDUCK_ADMIN_TOKEN")),
		lameduck.WithDrain(drain.WithBudget(*budget)),
		// grpcSrv.GracefulStop alone would wait forever for a stream only its
		// client ends (a health Watch); this one stops hard when ctx ends.
		lameduck.WithStopHook("grpc", func(ctx context.Context) error { return grpcdrain.GracefulStop(ctx, grpcSrv) }),
		lameduck.WithStopHook("http", httpSrv.Shutdown)) // hooks run in reverse: http first
	check(err)

	mw, err := httpdrain.Middleware(app.Tracker())
	check(err)
	httpSrv.Handler = mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") }))
	unary, err := grpcdrain.UnaryServerInterceptor(app.Tracker())
	check(err)
	grpcSrv = grpc.NewServer(grpc.UnaryInterceptor(unary))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(grpcSrv, hs)
	_, err = grpcdrain.NotServingOnDrain(app.Tracker(), hs)
	check(err)

	go httpSrv.Serve(hl)
	go grpcSrv.Serve(gl)
	os.Exit(lameduck.ExitCode(app.Run(context.Background())))
}

func check(err error) {
	if err != nil {
		log.SetFlags(0)
		log.Printf("app: %v", err)
		os.Exit(lameduck.ExitBadInput)
	}
}
