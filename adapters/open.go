// Package adapters opens registries from URLs, the way users name them on
// the command line:
//
//	memory://?push-delay=200ms                     in-process (demo and tests only)
//	consul://127.0.0.1:8500?dc=dc1                 (when the Consul adapter is built in)
//	nacos://127.0.0.1:8848?namespace=public&group=DEFAULT_GROUP
//
// Credentials never come only from the URL; they come from flags or the
// environment (see Credentials).
package adapters

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/registry"
)

// Registry is an opened registry; Close releases its clients and
// goroutines.
type Registry interface {
	registry.Registry
	Close() error
}

// Credentials are secrets for registries, taken from flags or the
// environment. They are never printed.
type Credentials struct {
	ConsulToken   string
	NacosUsername string
	NacosPassword string
}

// Environment variables that hold Credentials. The lameduck commands' flags
// take them as defaults.
const (
	EnvConsulToken   = consul.EnvHTTPToken // Consul's own name, as its tools use it
	EnvNacosUsername = "NACOS_USERNAME"
	EnvNacosPassword = "NACOS_PASSWORD"
)

// SecretEnv names the environment variables whose values are registry
// secrets that lameduck reads: the Credentials' own, and CONSUL_HTTP_AUTH,
// which Consul's SDK reads by itself. Variables that only point at a
// secret (CONSUL_HTTP_TOKEN_FILE, CONSUL_CLIENT_KEY) are not listed.
// `lameduck run` keeps them from the child it supervises.
func SecretEnv() []string {
	return []string{EnvConsulToken, consul.EnvHTTPAuth, EnvNacosUsername, EnvNacosPassword}
}

// CredentialsFromEnv returns the Credentials the environment variables
// hold; unset ones are empty.
func CredentialsFromEnv() Credentials {
	return Credentials{
		ConsulToken:   os.Getenv(EnvConsulToken),
		NacosUsername: os.Getenv(EnvNacosUsername),
		NacosPassword: os.Getenv(EnvNacosPassword),
	}
}

// opener checks the URL of one scheme and returns what opens the registry
// it names. It does no I/O, so that a URL is checked whole before anything
// connects, and can be fuzzed (FuzzRegistryURL).
type opener func(u *url.URL, creds Credentials) (openFunc, error)

// openFunc opens a checked registry URL.
type openFunc func() (Registry, error)

var openers = map[string]opener{
	"memory": openMemory,
}

// Schemes lists the registry URL schemes this build understands.
func Schemes() []string {
	out := make([]string, 0, len(openers))
	for s := range openers {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Open parses raw and opens the registry it names. Errors name the part of
// the URL that is wrong and what would be right, and never include
// credentials.
func Open(ctx context.Context, raw string, creds Credentials) (Registry, error) {
	open, err := parse(raw, creds)
	if err != nil {
		return nil, err
	}
	return open()
}

// parse checks raw, without I/O, and returns what opens it.
func parse(raw string, creds Credentials) (openFunc, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("adapters: empty registry URL; want one like %s", examples())
	}
	if !strings.Contains(raw, "://") {
		return nil, fmt.Errorf("adapters: registry URL %q has no scheme; want one like %s", redact(raw), examples())
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("adapters: registry URL %q does not parse; want one like %s", redact(raw), examples())
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("adapters: registry URL %q has no scheme; want one like %s", redact(raw), examples())
	}
	if u.Opaque != "" {
		// "consul:x://..." : the "://" is not right after the scheme.
		return nil, fmt.Errorf("adapters: registry URL %q is not scheme://host:port; want one like %s", redact(raw), examples())
	}
	if u.User != nil {
		return nil, fmt.Errorf("adapters: registry URL %q carries credentials; pass them by flag or environment instead", redact(raw))
	}
	check, ok := openers[strings.ToLower(u.Scheme)]
	if !ok {
		return nil, fmt.Errorf("adapters: unknown registry scheme %q in %q; want one of %s", u.Scheme, redact(raw), strings.Join(Schemes(), ", "))
	}
	return check(u, creds)
}

// OpenAll opens every URL; on failure it closes what it opened.
func OpenAll(ctx context.Context, raws []string, creds Credentials) ([]Registry, error) {
	var out []Registry
	for _, raw := range raws {
		r, err := Open(ctx, raw, creds)
		if err != nil {
			_ = CloseAll(out)
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// CloseAll closes every registry, in reverse order, and joins the errors.
func CloseAll(regs []Registry) error {
	var errs []error
	for k := len(regs) - 1; k >= 0; k-- {
		errs = append(errs, regs[k].Close())
	}
	return errors.Join(errs...)
}

func examples() string {
	return "memory://?push-delay=200ms, consul://127.0.0.1:8500 or nacos://127.0.0.1:8848"
}

// redact drops what may be userinfo from a URL for error messages: from
// after "://" (or from the start, for a URL without one, such as
// "user:password@host:8500") to the last "@", whether or not net/url reads
// it as userinfo. A password holding "@" or "/" is dropped whole; an "@" in a
// query takes the text before it along, which an error can spare.
func redact(raw string) string {
	start := 0
	if j := strings.Index(raw, "://"); j >= 0 {
		start = j + len("://")
	}
	if i := strings.LastIndex(raw, "@"); i >= start {
		return raw[:start] + "REDACTED@" + raw[i+1:]
	}
	return raw
}

// params checks that q holds only the allowed keys, each at most once.
func params(scheme string, q url.Values, allowed ...string) error {
	for k, v := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			want := "none"
			if len(allowed) > 0 {
				want = strings.Join(allowed, ", ")
			}
			return fmt.Errorf("adapters: unknown %s URL parameter %q; known: %s", scheme, k, want)
		}
		if len(v) > 1 {
			return fmt.Errorf("adapters: %s URL parameter %q given %d times; give it once", scheme, k, len(v))
		}
	}
	return nil
}

func openMemory(u *url.URL, _ Credentials) (openFunc, error) {
	q := u.Query()
	if err := params("memory", q, "push-delay"); err != nil {
		return nil, err
	}
	if u.Host != "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("adapters: memory URL takes no host or path, got %q; use memory://?push-delay=200ms", u.String())
	}
	var opts []memory.Option
	if s := q.Get("push-delay"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("adapters: memory URL parameter push-delay=%q is not a duration such as 200ms", s)
		}
		opts = append(opts, memory.WithPushDelay(d))
	}
	name := "memory://"
	if u.RawQuery != "" {
		name += "?" + u.RawQuery
	}
	opts = append(opts, memory.WithName(name))
	return func() (Registry, error) { return memory.New(opts...) }, nil
}
