package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/registry"
)

func statusCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "status",
		Usage: "list a service's instances in each registry, with the phase their admin endpoint reports",
		Description: "An instance run by the lameduck library publishes its admin endpoint in its metadata\n" +
			"(" + lameduck.MetaAdmin + "); status asks each one for its phase. Others show \"-\".",
		Flags: append(registryFlags(""),
			&ucli.StringFlag{Name: "service", Usage: "service name (required)"},
			&ucli.StringFlag{Name: "admin-token", Usage: "bearer token for the admin endpoints", EnvVars: []string{EnvAdminToken}},
		),
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return badInput("unexpected argument %q; every input is a flag", c.Args().First())
			}
			service := c.String("service")
			if service == "" {
				return badInput("missing --service; name the service to list")
			}
			regs, err := openRegistries(c)
			if err != nil {
				return err
			}
			defer adapters.CloseAll(regs)
			tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "REGISTRY\tINSTANCE\tADDRESS\tPHASE\tIN FLIGHT")
			for _, r := range regs {
				list, err := listOnce(c.Context, r, service)
				if err != nil {
					return &exitError{code: ExitRegistry, err: err}
				}
				if len(list) == 0 {
					fmt.Fprintf(tw, "%s\t(none)\t\t\t\n", r)
				}
				for _, in := range list {
					phase, inflight := adminPhase(c.Context, in, c.String("admin-token"))
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r, in.Key(), in.Endpoint(), phase, inflight)
				}
			}
			return tw.Flush()
		},
	}
}

// listOnce returns what consumers of service see in r now.
func listOnce(ctx context.Context, r registry.Registry, service string) ([]registry.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := r.Watch(ctx, service)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	list, err := w.Next(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: list %q in %s: %w", service, r, err)
	}
	return list, nil
}

func adminPhase(ctx context.Context, in registry.Instance, token string) (phase, inflight string) {
	url := in.Metadata[lameduck.MetaAdmin]
	if url == "" {
		return "-", "-"
	}
	var opts []admin.ClientOption
	if token != "" {
		opts = append(opts, admin.WithClientToken(token))
	}
	cl, err := admin.NewClient(url, opts...)
	if err != nil {
		return "bad admin URL", "-"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		return "unreachable", "-"
	}
	return st.Phase.String(), fmt.Sprint(st.InFlight)
}
