package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/pkg/supervisor"
	"github.com/lameduck/lameduck/registry"
)

func runCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "run",
		Usage:     "supervise a service: register it once ready, deregister the moment it dies, restart it, take it offline losslessly on SIGTERM",
		ArgsUsage: "-- COMMAND [ARGS...]",
		Description: "Starts COMMAND in its own process group, registers it in every --registry once --ready passes\n" +
			"(an HTTP URL; by default, once --port accepts connections), deregisters it at once when it exits\n" +
			"abnormally and restarts it with backoff, giving up after too many failures in a short time.\n" +
			"On SIGTERM or SIGINT: deregister, confirm, wait for its connections to close, then SIGTERM to\n" +
			"the child and SIGKILL at the deadline.\n\n" +
			"Exit codes: 0 clean, 1 gave up or failed, 2 bad input, 3 registry unreachable, 4 forced at the deadline.",
		Flags: append(registryFlags(""),
			&ucli.StringFlag{Name: "service", Usage: "service name (required)"},
			&ucli.IntFlag{Name: "port", Usage: "the port the child serves on (required)"},
			&ucli.StringFlag{Name: "addr", Value: "127.0.0.1", Usage: "the address consumers reach the child at", EnvVars: []string{EnvPodIP}},
			&ucli.StringFlag{Name: "id", Usage: "instance ID (default SERVICE-ADDR-PORT)"},
			&ucli.StringFlag{Name: "ready", Usage: "readiness URL; registered only once it answers 2xx"},
			&ucli.StringFlag{Name: "live", Usage: "liveness URL; the child is restarted when it keeps failing"},
			&ucli.DurationFlag{Name: "budget", Value: 30 * time.Second, Usage: "the one deadline for taking the child offline"},
		),
		Action: func(c *ucli.Context) error {
			argv := c.Args().Slice()
			if len(argv) == 0 {
				return badInput("no command to run; put it after --, as in: lameduck run --service web --port 8080 -- ./web")
			}
			service := c.String("service")
			if service == "" {
				return badInput("missing --service; name the service the child serves")
			}
			port := c.Int("port")
			if port < 1 || port > 65535 {
				return badInput("--port %d: give the port the child serves on (1-65535)", port)
			}
			if c.Duration("budget") <= 0 {
				return badInput("--budget %v: want a positive duration such as 30s", c.Duration("budget"))
			}
			if len(c.StringSlice("registry")) == 0 {
				return badInput("no registry given; pass --registry URL (repeat for several) or set %s", EnvRegistry)
			}
			regs, err := openRegistries(c)
			if err != nil {
				return err
			}
			defer adapters.CloseAll(regs)
			inst := registry.Instance{Service: service, ID: c.String("id"), Address: c.String("addr"), Port: port}
			if inst.ID == "" {
				inst.ID = fmt.Sprintf("%s-%s-%d", service, inst.Address, port)
			}
			if err := inst.Validate(); err != nil {
				return badInput("%v", err)
			}
			spec := supervisor.Spec{
				Name: filepath.Base(argv[0]), Path: argv[0], Args: argv[1:],
				Instance: inst, Ready: tcpReady,
			}
			for _, r := range regs {
				spec.Registries = append(spec.Registries, r)
			}
			if u := c.String("ready"); u != "" {
				spec.Ready = supervisor.HTTPCheck(u)
			}
			if u := c.String("live"); u != "" {
				spec.Live = supervisor.HTTPCheck(u)
			}
			sup, err := supervisor.New(spec,
				supervisor.WithBudget(c.Duration("budget")),
				supervisor.WithOutput(c.App.Writer, c.App.ErrWriter),
				supervisor.WithEventHook(func(e supervisor.Event) {
					attrs := []any{"child", e.Name}
					if e.PID != 0 {
						attrs = append(attrs, "pid", e.PID)
					}
					switch {
					case e.Kind == supervisor.EventExited && e.Signal != 0:
						attrs = append(attrs, "signal", e.Signal.String())
					case e.Kind == supervisor.EventExited:
						attrs = append(attrs, "code", e.Code)
					case e.Drain != nil:
						attrs = append(attrs, "phase", e.Drain.Phase.String(), "event", e.Drain.Kind.String())
					case e.Delay > 0:
						attrs = append(attrs, "delay", e.Delay)
					}
					if e.Err != nil {
						attrs = append(attrs, "err", e.Err)
					}
					slog.Info("lameduck run: "+e.Kind.String(), attrs...)
				}))
			if err != nil {
				return badInput("%v", err)
			}
			err = sup.Run(c.Context)
			if err == nil {
				return nil
			}
			code := lameduck.ExitCode(err)
			if errors.Is(err, supervisor.ErrGaveUp) {
				code = ExitFailed
			}
			return &exitError{code: code, err: err}
		},
	}
}

// tcpReady passes once something accepts connections on the port.
func tcpReady(ctx context.Context, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("run: nothing accepts connections on %s yet: %w", addr, err)
	}
	return conn.Close()
}
