package adapters

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// secret is a password or token that must never show up in an error or a
// registry's name.
const secret = "s3cr3t-Pa55"

func TestOpen(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		raw     string
		creds   Credentials
		want    []string // substrings of the error; nil means Open succeeds
		wantStr string   // for success: what String returns ("" skips the check)
	}{
		{name: "memory", raw: "memory://", wantStr: "memory://"},
		{name: "memory push-delay", raw: "memory://?push-delay=200ms", wantStr: "memory://?push-delay=200ms"},
		{name: "memory upper-case scheme", raw: "MEMORY://?push-delay=0s"},
		{name: "memory push-delay not a duration", raw: "memory://?push-delay=soon", want: []string{"push-delay", `"soon"`}},
		{name: "memory push-delay negative", raw: "memory://?push-delay=-1s", want: []string{"push-delay", `"-1s"`}},
		{name: "memory with host", raw: "memory://somewhere", want: []string{"takes no host or path"}},
		{name: "memory unknown parameter", raw: "memory://?delay=1s", want: []string{`"delay"`, "push-delay"}},
		{name: "memory repeated parameter", raw: "memory://?push-delay=1s&push-delay=2s", want: []string{`"push-delay"`, "2 times"}},

		{name: "empty", raw: "", want: []string{"empty registry URL"}},
		{name: "blank", raw: "  \t", want: []string{"empty registry URL"}},
		{name: "no scheme", raw: "localhost", want: []string{"has no scheme"}},
		{name: "malformed host", raw: "consul://[::1", want: []string{"does not parse", `"consul://[::1"`}},
		{name: "host without scheme", raw: "127.0.0.1:8500", want: []string{"has no scheme"}},
		{name: "malformed escape", raw: "consul://127.0.0.1:8500/%zz", want: []string{"does not parse"}},
		{name: "unknown scheme", raw: "zookeeper://127.0.0.1:2181", want: []string{`"zookeeper"`, "consul, memory, nacos"}},
		{name: "opaque", raw: "consul:x://127.0.0.1:8500", want: []string{`"consul:x://127.0.0.1:8500" is not scheme://host:port`}},
		{name: "scheme forgotten", raw: "admin:" + secret + "@127.0.0.1:8500", want: []string{`"REDACTED@127.0.0.1:8500" has no scheme`}},

		{name: "consul", raw: "consul://127.0.0.1:8500?dc=dc1", wantStr: "consul://127.0.0.1:8500?dc=dc1"},
		{name: "consul all parameters", raw: "consul://10.0.0.1:8501?dc=dc2&ttl=10s&tls=true&tls-skip-verify=false", wantStr: "consul://10.0.0.1:8501?dc=dc2"},
		{name: "consul trailing slash", raw: "consul://127.0.0.1:8500/"},
		{name: "consul port 0", raw: "consul://127.0.0.1:0", want: []string{`port "0"`, "between 1 and 65535"}},
		{name: "consul port 70000", raw: "consul://127.0.0.1:70000", want: []string{`port "70000"`, "between 1 and 65535"}},
		{name: "consul port abc", raw: "consul://127.0.0.1:abc", want: []string{"does not parse"}},
		{name: "consul missing host", raw: "consul://:8500", want: []string{`":8500"`, "no host name"}},
		{name: "consul missing port", raw: "consul://127.0.0.1", want: []string{`"127.0.0.1"`, "not host:port"}},
		{name: "consul path", raw: "consul://127.0.0.1:8500/v1", want: []string{"takes no path", `"/v1"`}},
		{name: "consul dc empty", raw: "consul://127.0.0.1:8500?dc=", want: []string{"dc is empty"}},
		{name: "consul ttl bad", raw: "consul://127.0.0.1:8500?ttl=long", want: []string{`ttl="long"`}},
		{name: "consul ttl too small", raw: "consul://127.0.0.1:8500?ttl=500ms", want: []string{`ttl="500ms"`, "1s or more"}},
		{name: "consul tls bad", raw: "consul://127.0.0.1:8500?tls=maybe", want: []string{`tls="maybe"`, "true or false"}},
		{name: "consul tls-skip-verify bad", raw: "consul://127.0.0.1:8500?tls-skip-verify=sure", want: []string{`tls-skip-verify="sure"`, "true or false"}},
		{name: "consul unknown parameter", raw: "consul://127.0.0.1:8500?token=" + secret, want: []string{`"token"`, "dc, ttl"}},
		{name: "consul confirm servers", raw: "consul://127.0.0.21:8500?confirm=servers", wantStr: "consul://127.0.0.21:8500"},
		{name: "consul confirm list", raw: "consul://127.0.0.21:8500?confirm=127.0.0.11:8500,127.0.0.12:8500,servers,agents"},
		{name: "consul confirm empty entry", raw: "consul://127.0.0.1:8500?confirm=127.0.0.11:8500,,", want: []string{"empty entry", "servers, agents or host:port"}},
		{name: "consul confirm bad address", raw: "consul://127.0.0.1:8500?confirm=127.0.0.11", want: []string{`"127.0.0.11"`, "not host:port", "servers, agents or host:port"}},
		{name: "consul repeated parameter", raw: "consul://127.0.0.1:8500?dc=a&dc=b", want: []string{`"dc"`, "2 times"}},

		{name: "nacos missing host", raw: "nacos://?namespace=dev", want: []string{"has no host"}},
		{name: "nacos missing host with slash", raw: "nacos:///", want: []string{"has no host"}},
		{name: "nacos missing port", raw: "nacos://127.0.0.1", want: []string{"not host:port"}},
		{name: "nacos port 0", raw: "nacos://127.0.0.1:0", want: []string{`port "0"`}},
		{name: "nacos port 70000", raw: "nacos://127.0.0.1:70000", want: []string{`port "70000"`}},
		{name: "nacos port leaves no room for gRPC", raw: "nacos://127.0.0.1:65000", want: []string{"below 64536"}},
		{name: "nacos cluster bad node", raw: "nacos://127.0.0.1,127.0.0.1:8858", want: []string{`"127.0.0.1"`, "not host:port", "nacos://host:port,host:port"}},
		{name: "nacos cluster empty node", raw: "nacos://127.0.0.1:8848,,127.0.0.1:8868", want: []string{`""`, "nacos://host:port,host:port"}},
		{name: "nacos path", raw: "nacos://127.0.0.1:8848/api", want: []string{"takes no path", `"/api"`}},
		{name: "nacos timeout bad", raw: "nacos://127.0.0.1:8848?timeout=0s", want: []string{`timeout="0s"`}},
		{name: "nacos unknown parameter", raw: "nacos://127.0.0.1:8848?password=" + secret, want: []string{`"password"`, "namespace"}},
		{name: "nacos repeated parameter", raw: "nacos://127.0.0.1:8848?group=a&group=b", want: []string{`"group"`, "2 times"}},
		{
			name: "nacos username without password", raw: "nacos://127.0.0.1:8848",
			creds: Credentials{NacosUsername: "nacos"}, want: []string{"both a user name and a password"},
		},
		{
			name: "nacos password without username", raw: "nacos://127.0.0.1:8848",
			creds: Credentials{NacosPassword: secret}, want: []string{"both a user name and a password"},
		},

		{name: "credentials in consul URL", raw: "consul://admin:" + secret + "@127.0.0.1:8500", want: []string{"carries credentials"}},
		{name: "credentials in nacos URL", raw: "nacos://nacos:" + secret + "@127.0.0.1:8848?namespace=dev", want: []string{"carries credentials"}},
		{name: "user name only in URL", raw: "memory://" + secret + "@", want: []string{"carries credentials"}},
		{name: "credentials in malformed URL", raw: "consul://admin:" + secret + "@[::1", want: []string{"does not parse", "REDACTED"}},
		{name: "credentials with @ in malformed URL", raw: "consul://admin:" + secret + "@x@[::1", want: []string{"does not parse", "REDACTED"}},
		{name: "password with @ in malformed URL", raw: "consul://admin:p@" + secret + "@[::1", want: []string{"does not parse", "REDACTED"}},
		{name: "credentials with bad escape", raw: "consul://admin:" + secret + "%zz@127.0.0.1:8500", want: []string{"does not parse", "REDACTED"}},
		{name: "credentials with unknown scheme", raw: "etcd://root:" + secret + "@127.0.0.1:2379", want: []string{"carries credentials"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := Open(t.Context(), tc.raw, tc.creds)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Open(%q): want a registry, got error %v", tc.raw, err)
				}
				defer func() {
					if err := r.Close(); err != nil {
						t.Errorf("Close: want nil, got %v", err)
					}
				}()
				if tc.wantStr != "" && r.String() != tc.wantStr {
					t.Errorf("Open(%q).String(): want %q, got %q", tc.raw, tc.wantStr, r.String())
				}
				return
			}
			if err == nil {
				_ = r.Close()
				t.Fatalf("Open(%q): want an error containing %q, got a registry %s", tc.raw, tc.want, r)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "adapters: ") && !strings.HasPrefix(msg, "nacos: ") {
				t.Errorf("Open(%q): want an error with a package prefix, got %q", tc.raw, msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Open(%q): want an error containing %q, got %q", tc.raw, w, msg)
				}
			}
			if strings.Contains(msg, secret) {
				t.Errorf("Open(%q): want an error without the secret, got %q", tc.raw, msg)
			}
		})
	}
}

func TestOpenConsulTokenNotInName(t *testing.T) {
	t.Parallel()
	r, err := Open(t.Context(), "consul://127.0.0.1:8500?dc=dc1", Credentials{ConsulToken: secret})
	if err != nil {
		t.Fatalf("Open: want a registry, got error %v", err)
	}
	defer func() { _ = r.Close() }()
	if s := r.String(); strings.Contains(s, secret) {
		t.Errorf("String(): want no token, got %q", s)
	}
}

func TestOpenAll(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		raws    []string
		wantN   int
		wantErr string
	}{
		{name: "none", raws: nil, wantN: 0},
		{name: "two", raws: []string{"memory://", "consul://127.0.0.1:8500"}, wantN: 2},
		{name: "second bad", raws: []string{"memory://", "consul://127.0.0.1:0"}, wantErr: `port "0"`},
		{name: "first bad", raws: []string{"nope://", "memory://"}, wantErr: `"nope"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			regs, err := OpenAll(t.Context(), tc.raws, Credentials{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("OpenAll(%q): want an error containing %q, got %v", tc.raws, tc.wantErr, err)
				}
				if regs != nil {
					t.Errorf("OpenAll(%q): want no registries with the error, got %v", tc.raws, regs)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenAll(%q): want nil error, got %v", tc.raws, err)
			}
			if len(regs) != tc.wantN {
				t.Errorf("OpenAll(%q): want %d registries, got %d", tc.raws, tc.wantN, len(regs))
			}
			if err := CloseAll(regs); err != nil {
				t.Errorf("CloseAll: want nil, got %v", err)
			}
		})
	}
}

// closer records the order of Close calls.
type closer struct {
	Registry
	n     int
	order *[]int
	err   error
}

func (c *closer) Close() error { *c.order = append(*c.order, c.n); return c.err }

func TestCloseAllReverseOrderJoinsErrors(t *testing.T) {
	t.Parallel()
	var order []int
	e1, e3 := errors.New("one"), errors.New("three")
	regs := []Registry{&closer{n: 1, order: &order, err: e1}, &closer{n: 2, order: &order}, &closer{n: 3, order: &order, err: e3}}
	err := CloseAll(regs)
	if want := []int{3, 2, 1}; !slices.Equal(order, want) {
		t.Errorf("CloseAll order: want %v, got %v", want, order)
	}
	if !errors.Is(err, e1) || !errors.Is(err, e3) {
		t.Errorf("CloseAll: want an error joining %v and %v, got %v", e1, e3, err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on, nor on
// the port 1000 above it (Nacos's gRPC port).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: want a free port, got %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if p > 64000 {
			continue
		}
		g, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1000))
		if err != nil {
			continue
		}
		_ = g.Close()
		return p
	}
	t.Fatalf("want a free port pair, got none in 20 tries")
	return 0
}

// TestOpenNacosPublicNamespace opens a real SDK client against a port with
// nothing listening: the only way to see the options openNacos builds. It
// never reaches a server, and Close stops the client. The SDK connects in
// the background, so New returns at once.
func TestOpenNacosPublicNamespace(t *testing.T) {
	t.Parallel()
	port := strconv.Itoa(freePort(t))
	cases := []struct {
		name, query, want string
	}{
		{name: "public is the default", query: "?namespace=public", want: "nacos://127.0.0.1:" + port},
		{name: "other namespace", query: "?namespace=dev", want: "nacos://127.0.0.1:" + port + "?namespace=dev"},
	}
	// The subtests run one at a time: the SDK caches the local IP in a
	// global without a lock, so two clients starting at once race.
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := "nacos://127.0.0.1:" + port + tc.query + "&timeout=200ms&data-dir=" + t.TempDir()
			type result struct {
				r   Registry
				err error
			}
			done := make(chan result, 1)
			go func() {
				r, err := Open(context.Background(), raw, Credentials{NacosUsername: "nacos", NacosPassword: secret})
				done <- result{r, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("Open(%q): want a result within 30s, got none", raw)
			}
			if res.err != nil {
				if strings.Contains(res.err.Error(), secret) {
					t.Errorf("Open(%q): want an error without the password, got %q", raw, res.err)
				}
				t.Fatalf("Open(%q): want a registry (the SDK connects in the background), got %v", raw, res.err)
			}
			closed := make(chan error, 1)
			go func() { closed <- res.r.Close() }()
			defer func() {
				select {
				case err := <-closed:
					if err != nil {
						t.Errorf("Close: want nil, got %v", err)
					}
				case <-time.After(30 * time.Second):
					t.Errorf("Close: want it to return within 30s, got no return")
				}
			}()
			if got := res.r.String(); got != tc.want {
				t.Errorf("String(): want %q, got %q", tc.want, got)
			}
			if strings.Contains(res.r.String(), secret) {
				t.Errorf("String(): want no password, got %q", res.r.String())
			}
		})
	}
}

// Not parallel: it sets environment variables.
func TestCredentialsFromEnv(t *testing.T) {
	t.Setenv(EnvConsulToken, secret)
	t.Setenv(EnvNacosUsername, "nacos")
	t.Setenv(EnvNacosPassword, "")
	want := Credentials{ConsulToken: secret, NacosUsername: "nacos"}
	if got := CredentialsFromEnv(); got != want {
		t.Errorf("CredentialsFromEnv: want %+v, got %+v", want, got)
	}
}
