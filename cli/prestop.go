package cli

import (
	"context"
	"fmt"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck/pkg/conncount"
)

// EnvPodIP is what a Kubernetes manifest sets from the downward API
// (status.podIP), so prestop knows the instance's address.
const EnvPodIP = "POD_IP"

func prestopCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "prestop",
		Usage: "a Kubernetes preStop hook: drain this pod's instance, exit 0 when nothing is left to lose",
		Description: "With --admin (an app that links lameduck), asks the app to go offline and follows it until Offline.\n" +
			"Otherwise (any language), deregisters the instance itself (--registry, --service, --port and the\n" +
			"pod's IP), waits for each registry's confirmation, and counts the app's established TCP\n" +
			"connections on --port until they are zero for the quiet window.\n" +
			"The deadline is --grace-period (the pod's terminationGracePeriodSeconds) minus --margin.\n\n" +
			"Exit codes: 0 drained, 1 failed, 2 bad input, 3 registry unreachable, 4 forced at the deadline.",
		Flags: append(offlineFlags(),
			&ucli.DurationFlag{Name: "grace-period", Value: 30 * time.Second, Usage: "the pod's terminationGracePeriodSeconds"},
			&ucli.DurationFlag{Name: "margin", Value: 2 * time.Second, Usage: "kept back from the grace period for the kubelet's SIGTERM"},
			&ucli.IntFlag{Name: "port", Usage: "the app's port (plain mode; its connections are counted)"},
			&ucli.StringFlag{Name: "pod-ip", Usage: "the instance's address (plain mode)", EnvVars: []string{EnvPodIP}},
			&ucli.DurationFlag{Name: "quiet", Value: 500 * time.Millisecond, Usage: "how long the connection count must stay zero"},
		),
		Action: func(c *ucli.Context) error {
			grace, margin := c.Duration("grace-period"), c.Duration("margin")
			if grace <= 0 || margin < 0 || margin >= grace {
				return badInput("--grace-period %v and --margin %v: want a positive grace period larger than the margin", grace, margin)
			}
			if c.IsSet("budget") && c.Duration("budget") > grace-margin {
				return badInput("--budget %v is larger than the grace period %v minus the margin %v; the kubelet would kill the pod first", c.Duration("budget"), grace, margin)
			}
			if !c.IsSet("budget") {
				_ = c.Set("budget", (grace - margin).String())
			}
			// --admin means an app that links lameduck: it handles its
			// registries itself, whatever LAMEDUCK_REGISTRY says.
			if c.String("admin") != "" && !c.IsSet("port") {
				return prestopAdminOnly(c)
			}
			port := c.Int("port")
			if port < 1 || port > 65535 {
				return badInput("--port %d: give the app's port (1-65535), or --admin for an app that links lameduck", port)
			}
			if !c.IsSet("addr") {
				ip := c.String("pod-ip")
				if ip == "" {
					return badInput("the instance's address is unknown; set --addr host:port or %s (from the downward API's status.podIP)", EnvPodIP)
				}
				_ = c.Set("addr", fmt.Sprintf("%s:%d", ip, port))
			}
			counter, err := conncount.New(port)
			if err != nil {
				return badInput("%v", err)
			}
			listening, err := counter.Listening(c.Context)
			if err != nil {
				return err
			}
			if !listening {
				return badInput("nothing listens on port %d here; check --port", port)
			}
			job, err := parseOfflineJob(c)
			if err != nil {
				return err
			}
			job.wait = true
			quiet := c.Duration("quiet")
			job.drainLocal = func(ctx context.Context, progress func(string)) error {
				progress(fmt.Sprintf("counting established connections on port %d", port))
				return counter.WaitIdle(ctx, quiet, 50*time.Millisecond)
			}
			return runOfflineJob(c, job)
		},
	}
}

// prestopAdminOnly drives an app that links lameduck: its own protocol does
// the registries and the drain.
func prestopAdminOnly(c *ucli.Context) error {
	if err := checkJobFlags(c); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("budget"))
	defer cancel()
	asJSON := c.String("output") == "json"
	p := newProgress(c.App.Writer, asJSON)
	start := time.Now()
	phase, late, err := followAdmin(ctx, c.String("admin"), c.String("admin-token"), p)
	p.done()
	code := ExitOK
	if err != nil {
		code = ExitFailed
		if ctx.Err() != nil { // the deadline, as in plain mode
			code = ExitForced
		}
	}
	if asJSON {
		res := Result{ExitCode: code, DurationMS: time.Since(start).Milliseconds(), AdminPhase: phase, LateRequests: late}
		return printResult(c.App.Writer, res, err)
	}
	if err != nil {
		return &exitError{code: code, err: err}
	}
	fmt.Fprintf(c.App.Writer, "%s after %s\n", phase, time.Since(start).Round(time.Millisecond))
	return nil
}
