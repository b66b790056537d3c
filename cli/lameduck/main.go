// Command lameduck takes service instances offline from Consul or Nacos
// without losing a request. Run `lameduck --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/lameduck/lameduck/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
