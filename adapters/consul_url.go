package adapters

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lameduck/lameduck/adapters/consul"
)

func init() { openers["consul"] = openConsul }

// openConsul reads consul://[host:port][?dc=DC&ttl=15s&confirm=servers&tls=true&ca-file=F&cert-file=F&key-file=F&tls-skip-verify=true].
// An empty host means $CONSUL_HTTP_ADDR, else 127.0.0.1:8500. confirm takes
// "servers" (every server in the raft peer set, at the agent's HTTP port),
// "agents" (every live agent of the LAN pool, likewise) or a comma-separated
// list of host:port, or several of these.
func openConsul(u *url.URL, creds Credentials) (openFunc, error) {
	q := u.Query()
	if err := params("consul", q, "dc", "ttl", "confirm", "tls", "ca-file", "cert-file", "key-file", "tls-skip-verify"); err != nil {
		return nil, err
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("adapters: consul URL takes no path, got %q; use consul://127.0.0.1:8500", u.Path)
	}
	var opts []consul.Option
	if u.Host != "" {
		if err := checkHostPort("consul", u.Host); err != nil {
			return nil, err
		}
		opts = append(opts, consul.WithAddress(u.Host))
	}
	if dc := q.Get("dc"); dc != "" {
		opts = append(opts, consul.WithDatacenter(dc))
	} else if q.Has("dc") {
		return nil, fmt.Errorf("adapters: consul URL parameter dc is empty; name a datacenter or leave it out")
	}
	if s := q.Get("ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("adapters: consul URL parameter ttl=%q is not a duration of 1s or more", s)
		}
		opts = append(opts, consul.WithCheck(consul.Check{TTL: d}))
	}
	for _, c := range q["confirm"] {
		for _, a := range strings.Split(c, ",") {
			switch a = strings.TrimSpace(a); {
			case a == "servers":
				opts = append(opts, consul.WithConfirmThroughServers())
			case a == "agents":
				opts = append(opts, consul.WithConfirmThroughAgents())
			case a == "":
				return nil, fmt.Errorf("adapters: consul URL parameter confirm=%q has an empty entry; want servers, agents or host:port,host:port", c)
			default:
				if err := checkHostPort("consul", a); err != nil {
					return nil, fmt.Errorf("%w in confirm=%q; want servers, agents or host:port,host:port", err, c)
				}
				opts = append(opts, consul.WithConfirmThrough(a))
			}
		}
	}
	useTLS, err := boolParam("consul", q, "tls")
	if err != nil {
		return nil, err
	}
	skip, err := boolParam("consul", q, "tls-skip-verify")
	if err != nil {
		return nil, err
	}
	if useTLS || q.Get("ca-file") != "" || q.Get("cert-file") != "" || q.Get("key-file") != "" || skip {
		opts = append(opts, consul.WithTLS(consul.TLS{
			CAFile: q.Get("ca-file"), CertFile: q.Get("cert-file"), KeyFile: q.Get("key-file"), InsecureSkipVerify: skip,
		}))
	}
	if creds.ConsulToken != "" {
		opts = append(opts, consul.WithToken(creds.ConsulToken))
	}
	return func() (Registry, error) { return consul.New(opts...) }, nil
}

func checkHostPort(scheme, hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("adapters: %s URL host %q is not host:port", scheme, hostport)
	}
	if host == "" {
		return fmt.Errorf("adapters: %s URL host %q has no host name", scheme, hostport)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("adapters: %s URL port %q is not a port between 1 and 65535", scheme, port)
	}
	return nil
}

func boolParam(scheme string, q url.Values, key string) (bool, error) {
	s := q.Get(key)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("adapters: %s URL parameter %s=%q is not true or false", scheme, key, s)
	}
	return b, nil
}
