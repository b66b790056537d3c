// Package cli is the lameduck command set, built on urfave/cli/v2. The
// binary's main (cli/lameduck) only runs App.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
)

// Environment variables the commands read. Flags with the same meaning take
// these as defaults.
const (
	EnvRegistry      = "LAMEDUCK_REGISTRY"
	EnvConsulToken   = "CONSUL_HTTP_TOKEN" // Consul's own name, as its CLI uses it
	EnvNacosUsername = "NACOS_USERNAME"
	EnvNacosPassword = "NACOS_PASSWORD"
	EnvAdminToken    = "LAMEDUCK_ADMIN_TOKEN"
)

// DefaultRegistry is the demo's embedded registry.
const DefaultRegistry = "memory://?push-delay=200ms"

// Exit codes, documented in README; one home for them in package lameduck.
const (
	ExitOK       = lameduck.ExitOK
	ExitFailed   = lameduck.ExitFailed
	ExitBadInput = lameduck.ExitBadInput
	ExitRegistry = lameduck.ExitRegistry
	ExitForced   = lameduck.ExitForced
)

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
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := App(stdout, stderr)
	err := app.RunContext(ctx, args)
	var e *exitError
	if err != nil && !(errors.As(err, &e) && e.quiet) {
		fmt.Fprintf(stderr, "lameduck: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return ExitCode(err)
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
		&ucli.StringFlag{Name: "consul-token", Usage: "Consul ACL token", EnvVars: []string{EnvConsulToken}},
		&ucli.StringFlag{Name: "nacos-username", Usage: "Nacos user name", EnvVars: []string{EnvNacosUsername}},
		&ucli.StringFlag{Name: "nacos-password", Usage: "Nacos password", EnvVars: []string{EnvNacosPassword}},
	}
}

// openRegistries opens the registries named by the --registry flags.
func openRegistries(c *ucli.Context) ([]adapters.Registry, error) {
	urls := c.StringSlice("registry")
	if len(urls) == 0 {
		return nil, badInput("no registry given; pass --registry URL or set %s", EnvRegistry)
	}
	regs, err := adapters.OpenAll(c.Context, urls, adapters.Credentials{
		ConsulToken:   c.String("consul-token"),
		NacosUsername: c.String("nacos-username"),
		NacosPassword: c.String("nacos-password"),
	})
	if err != nil {
		return nil, &exitError{code: ExitBadInput, err: err}
	}
	return regs, nil
}
