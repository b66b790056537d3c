package cli

import (
	"fmt"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/cli/demo"
	"github.com/lameduck/lameduck/registry"
)

func demoCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "demo",
		Usage: "show, under load, what a naive stop loses and what lameduck keeps",
		Description: "Starts 3 instances of a small HTTP service registered in the registry, a load generator\n" +
			"that discovers them through the registry's watch, then takes one instance down the naive way\n" +
			"(deregister and shut down at once) and one the lameduck way, and prints what the consumer saw.\n" +
			"The default registry is the embedded one, with a 200ms push delay like a real registry's.",
		Flags: append(registryFlags(DefaultRegistry),
			&ucli.IntFlag{Name: "workers", Value: 8, Usage: "concurrent load workers"},
			&ucli.DurationFlag{Name: "quiet", Value: 250 * time.Millisecond, Usage: "lameduck's quiet window"},
			&ucli.DurationFlag{Name: "budget", Value: 20 * time.Second, Usage: "lameduck's deadline budget"},
			&ucli.BoolFlag{Name: "quiet-log", Usage: "print only the table"},
		),
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return badInput("demo takes no arguments, got %q", c.Args().First())
			}
			if w := c.Int("workers"); w < 1 || w > 1024 {
				return badInput("--workers %d is out of range; use 1 to 1024", w)
			}
			regs, err := openRegistries(c)
			if err != nil {
				return err
			}
			defer adapters.CloseAll(regs)
			var reg registry.Registry = regs[0]
			if len(regs) > 1 {
				multi := make(registry.Multi, len(regs))
				for k, r := range regs {
					multi[k] = r
				}
				reg = multi
			}
			out := c.App.Writer
			logf := func(format string, args ...any) {
				fmt.Fprintf(out, "  "+format+"\n", args...)
			}
			if c.Bool("quiet-log") {
				logf = nil
			}
			res, err := demo.Run(c.Context, demo.Config{
				Registry: reg,
				Workers:  c.Int("workers"),
				Quiet:    c.Duration("quiet"),
				Budget:   c.Duration("budget"),
				Log:      logf,
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(out)
			demo.PrintTable(out, res)
			if failed, _ := res.Failed("lameduck"); failed > 0 {
				return fmt.Errorf("demo: lameduck lost %d requests; that is a bug, please report it with this output", failed)
			}
			return nil
		},
	}
}
