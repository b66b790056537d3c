// Package cli is the lameduck command set, built on urfave/cli/v2. The
// binary's main (cli/lameduck) only runs App.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
)

// Environment variables the commands read. Flags with the same meaning take
// these as defaults; the credentials' are adapters.EnvConsulToken and its
// siblings.
const (
	EnvRegistry   = "LAMEDUCK_REGISTRY"
	EnvAdminToken = "LAMEDUCK_ADMIN_TOKEN"
)

// secretEnv names every environment variable whose value is a secret
// lameduck reads: the registries' (adapters.SecretEnv) and the admin
// token. `lameduck run` keeps them from its children unless --pass-env
// names them.
func secretEnv() []string { return append(adapters.SecretEnv(), EnvAdminToken) }

// DefaultRegistry is the demo's embedded registry.
const DefaultRegistry = "memory://?push-delay=200ms"

// exitError carries an exit code with a one-line message. A quiet one was
// already reported (in --output json) and is not printed again.
type exitError struct {
	code  int
	err   error
	quiet bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func badInput(format string, args ...any) error {
	return &exitError{code: ExitBadInput, err: fmt.Errorf(format, args...)}
}

// ExitCode maps an error from App.Run to the documented exit code.
func ExitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return lameduck.ExitCode(err)
}

// App returns the lameduck command-line application.
func App(stdout, stderr io.Writer) *ucli.App {
	return &ucli.App{
		Name:  "lameduck",
		Usage: "take service instances offline from Consul or Nacos without losing a request",
		Description: "lameduck deregisters an instance, waits until the registry confirms consumers no longer see it,\n" +
			"drains in-flight requests until they reach zero and stay quiet, and only then stops it,\n" +
			"all within one deadline. Evidence instead of `sleep 30`.",
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelp:        true, // see helpFlag
		HideHelpCommand: true,
		Flags:           []ucli.Flag{helpFlag()},
		Commands: withUsageErrors(
			demoCommand(),
			offlineCommand(),
			prestopCommand(),
			statusCommand(),
			runCommand(),
		),
		OnUsageError: usageError,
		// Reached only when no command matched.
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return badInput("unknown command %q; run lameduck --help for the list", c.Args().First())
			}
			return ucli.ShowAppHelp(c)
		},
		ExitErrHandler: func(*ucli.Context, error) {}, // Main decides the exit code
	}
}

// usageError turns urfave's flag errors into one-line bad-input errors.
func usageError(c *ucli.Context, err error, _ bool) error {
	return badInput("%v (see --help)", err)
}

func withUsageErrors(cmds ...*ucli.Command) []*ucli.Command {
	for _, c := range cmds {
		c.OnUsageError = usageError
		c.HideHelp = true // see helpFlag
		c.Flags = append(c.Flags, helpFlag())
	}
	return cmds
}

// helpFlag returns a --help flag for one App or command. urfave/cli's shared
// HelpFlag is written to each time a command's flags are parsed
// (BoolFlag.Apply), so two Apps running at once, as Main in parallel tests,
// would race on it. HideHelp keeps the shared one out; urfave/cli still
// shows help when a flag named help is set.
func helpFlag() ucli.Flag {
	return &ucli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help", DisableDefaultText: true}
}

// Main runs the app with args and returns the process exit code. Errors are
// printed as one line, never a stack trace.
//
// When ctx comes from Interrupts.Context, a second interrupt ends Main
// promptly with ExitForced: a command that handles it (run: SIGKILL to
// its children) is waited for; any other is left behind, for the process
// to exit.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runApp(ctx, App(stdout, stderr), args, stderr)
}

func runApp(ctx context.Context, app *ucli.App, args []string, stderr io.Writer) int {
	in, _ := ctx.Value(interruptsKey{}).(*Interrupts)
	if in == nil {
		return reportExit(app.RunContext(ctx, args), stderr)
	}
	done := make(chan error, 1)
	go func() { done <- app.RunContext(ctx, args) }()
	select {
	case err := <-done:
		return reportExit(err, stderr)
	case <-in.forced:
	}
	if in.claimed.Load() {
		select {
		case err := <-done:
			return reportExit(err, stderr)
		case <-in.abandon:
		}
	}
	select {
	case err := <-done: // it ended in the meantime: its own report is better
		return reportExit(err, stderr)
	default:
	}
	fmt.Fprintln(stderr, "lameduck: stopped at once by a second signal")
	return ExitForced
}

// reportExit prints err (unless it is quiet) and returns its exit code.
func reportExit(err error, stderr io.Writer) int {
	var e *exitError
	if err != nil && !(errors.As(err, &e) && e.quiet) {
		fmt.Fprintf(stderr, "lameduck: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return ExitCode(err)
}

// Interrupts turns the process's stop signals into what the commands do.
// The first interrupt cancels the context commands run under (Context), so
// they finish gracefully: run takes its programs offline. The second forces
// the stop: a command that claimed it (run, which sends SIGKILL to its
// children) ends with exit code 4, and Main ends any other command at once
// with exit code 4. From the third on, Main returns at once whatever the
// command is doing.
//
// cli/lameduck's main wires SIGTERM and SIGINT to it with Notify; tests
// call Interrupt. Its methods are safe for concurrent use.
type Interrupts struct {
	ctx     context.Context
	cancel  context.CancelCauseFunc
	forced  chan struct{} // closed by the second interrupt
	abandon chan struct{} // closed by the third
	claimed atomic.Bool   // a command handles forced itself

	mu sync.Mutex
	n  int
}

type interruptsKey struct{}

// NewInterrupts returns Interrupts whose Context derives from parent.
func NewInterrupts(parent context.Context) *Interrupts {
	ctx, cancel := context.WithCancelCause(parent)
	in := &Interrupts{cancel: cancel, forced: make(chan struct{}), abandon: make(chan struct{})}
	in.ctx = context.WithValue(ctx, interruptsKey{}, in)
	return in
}

// Context is the context to pass to Main: it ends at the first interrupt
// (context.Cause names the signal), and carries in for Main and the
// commands.
func (in *Interrupts) Context() context.Context { return in.ctx }

// Interrupt counts one stop request; sig names it in the context's cause
// and may be nil.
func (in *Interrupts) Interrupt(sig os.Signal) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.n++
	switch in.n {
	case 1:
		in.cancel(fmt.Errorf("cli: interrupted by %v", sig))
	case 2:
		close(in.forced)
	case 3:
		close(in.abandon)
	}
}

// Notify relays sigs to Interrupt until stop is called. It does not block.
func (in *Interrupts) Notify(sigs ...os.Signal) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, sigs...)
	quit := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-ch:
				in.Interrupt(s)
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(quit)
		})
	}
}

// forceRequested returns a channel closed by the second interrupt, and
// tells Main that the calling command handles it (it must then end
// promptly once the channel is closed). Without Interrupts in ctx it
// returns nil: a channel that never fires.
func forceRequested(ctx context.Context) <-chan struct{} {
	in, _ := ctx.Value(interruptsKey{}).(*Interrupts)
	if in == nil {
		return nil
	}
	in.claimed.Store(true)
	return in.forced
}

// registryFlags are the flags every command that talks to registries takes.
func registryFlags(def string) []ucli.Flag {
	reg := &ucli.StringSliceFlag{
		Name:    "registry",
		Usage:   "registry URL, repeat for several (consul://127.0.0.1:8500?dc=dc1, nacos://127.0.0.1:8848?namespace=public)",
		EnvVars: []string{EnvRegistry},
	}
	if def != "" {
		reg.Value = ucli.NewStringSlice(def)
	}
	return []ucli.Flag{
		reg,
		&ucli.StringFlag{Name: "consul-token", Usage: "Consul ACL token", EnvVars: []string{adapters.EnvConsulToken}},
		&ucli.StringFlag{Name: "nacos-username", Usage: "Nacos user name", EnvVars: []string{adapters.EnvNacosUsername}},
		&ucli.StringFlag{Name: "nacos-password", Usage: "Nacos password", EnvVars: []string{adapters.EnvNacosPassword}},
	}
}

// registryURLs returns the --registry values. urfave/cli splits a flag's
// value and its environment variable at commas, which also cuts the URLs
// that hold commas (nacos://a:8848,b:8848 and ?confirm=a:8500,b:8500), so a
// piece without a scheme is put back onto the URL before it.
func registryURLs(c *ucli.Context) []string {
	return joinURLs(c.StringSlice("registry"))
}

func joinURLs(pieces []string) []string {
	var out []string
	for _, p := range pieces {
		if n := len(out); n > 0 && !strings.Contains(p, "://") {
			out[n-1] += "," + p
			continue
		}
		out = append(out, p)
	}
	return out
}

// registryCredentials are the credentials registryFlags give (each flag
// defaults to its environment variable).
func registryCredentials(c *ucli.Context) adapters.Credentials {
	return adapters.Credentials{
		ConsulToken:   c.String("consul-token"),
		NacosUsername: c.String("nacos-username"),
		NacosPassword: c.String("nacos-password"),
	}
}

// noRegistry is the error of a command given no registry URL. config names
// the --config file whose registries: would also do, or is "".
func noRegistry(config string) error {
	if config != "" {
		return badInput("no registry given; pass --registry URL (repeat for several), set %s, or list registries: in %s", EnvRegistry, config)
	}
	return badInput("no registry given; pass --registry URL (repeat for several) or set %s", EnvRegistry)
}

// openRegistries opens the registries named by the --registry flags, and
// refuses a command line that names none.
func openRegistries(c *ucli.Context) ([]adapters.Registry, error) {
	urls := registryURLs(c)
	if len(urls) == 0 {
		return nil, noRegistry("")
	}
	regs, err := adapters.OpenAll(c.Context, urls, registryCredentials(c))
	if err != nil {
		return nil, &exitError{code: ExitBadInput, err: err}
	}
	return regs, nil
}
