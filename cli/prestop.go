package cli

import (
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
			"pod's IP), waits for each registry's confirmation, then watches the app's TCP connections on --port\n" +
			"through the kernel (sock_diag, as ss -ti does) until none carries a request and none has arrived for\n" +
			"--quiet. Idle keep-alive connections and streams the app writes to do not hold it up: the app's own\n" +
			"graceful shutdown after SIGTERM closes them. Where the kernel's per-connection times are not available\n" +
			"every established connection counts as busy; --conn-wait then bounds the wait.\n" +
			"The deadline is --grace-period (the pod's terminationGracePeriodSeconds) minus --margin.\n\n" +
			exitCodesHelp(),
		Flags: append(offlineFlags(),
			&ucli.DurationFlag{Name: "grace-period", Value: 30 * time.Second, Usage: "the pod's terminationGracePeriodSeconds"},
			&ucli.DurationFlag{Name: "margin", Value: 2 * time.Second, Usage: "kept back from the grace period for the kubelet's SIGTERM"},
			&ucli.IntFlag{Name: "port", Usage: "the app's port (plain mode; its connections are watched)"},
			&ucli.StringFlag{Name: "pod-ip", Usage: "the instance's address (plain mode)", EnvVars: []string{EnvPodIP}},
			&ucli.DurationFlag{Name: "quiet", Value: 250 * time.Millisecond,
				Usage: "how long no request may arrive, counted from the registries' confirmation or the last request after it"},
			&ucli.DurationFlag{Name: "conn-wait", DefaultText: "until the deadline",
				Usage: "plain mode: after the registries confirm, wait at most this long for the connections to go quiet, " +
					"then exit so the app gets SIGTERM (0: no wait); requests still running are left to the app's graceful shutdown"},
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
			if q := c.Duration("quiet"); q < 0 {
				return badInput("--quiet %v: want a duration of 0 or more, such as 500ms", q)
			}
			connWait, hasConnWait := c.Duration("conn-wait"), c.IsSet("conn-wait")
			if connWait < 0 {
				return badInput("--conn-wait %v: want a duration of 0 or more, such as 250ms (0: no wait for connections)", connWait)
			}
			// --admin means an app that links lameduck: it handles its
			// registries itself, whatever LAMEDUCK_REGISTRY says.
			if c.String("admin") != "" && !c.IsSet("port") {
				if hasConnWait {
					return badInput("--conn-wait is for plain mode (--port); an app that links lameduck drains its own connections, so drop it")
				}
				return prestopAdminOnly(c)
			}
			if err := linuxOnlyPlainPrestop.onThisOS(); err != nil {
				return err
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
			job.lagFits = true
			job.quiet = c.Duration("quiet")
			job.conns = &conncount.Drainer{Counter: counter, MaxWait: connWait, Bounded: hasConnWait}
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
	job := &offlineJob{
		budget:     c.Duration("budget"),
		adminURL:   c.String("admin"),
		adminToken: c.String("admin-token"),
		json:       c.String("output") == "json",
		wait:       true,
	}
	if c.IsSet("consumer-lag") {
		return badInput("--consumer-lag is for plain mode (--port); an app that links lameduck sets its own (lameduck.WithDrain(drain.WithConsumerLag(d)))")
	}
	return runOfflineJob(c, job)
}
