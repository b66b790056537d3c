// Command lameduck takes service instances offline from Consul or Nacos
// without losing a request. Run `lameduck --help`.
package main

import (
	"context"
	"os"
	"syscall"

	"github.com/lameduck/lameduck/cli"
)

// main: the first SIGTERM or SIGINT lets the command finish gracefully, the
// second forces it (exit code 4), a third ends the process at once.
func main() {
	in := cli.NewInterrupts(context.Background())
	stop := in.Notify(os.Interrupt, syscall.SIGTERM)
	code := cli.Main(in.Context(), os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
