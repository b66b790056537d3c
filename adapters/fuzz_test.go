package adapters

import (
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzRegistryURL checks registry URLs as Open does, short of connecting:
// it never panics; an error is one line with the package prefix and holds
// no credential, from Credentials or from the URL's userinfo; an accepted URL has a
// known scheme and host:port pairs with ports in range, and is accepted
// again once written back from the parts net/url read.
func FuzzRegistryURL(f *testing.F) {
	for _, s := range []string{
		"memory://", "memory://?push-delay=200ms", "MEMORY://?push-delay=0s", "memory://?push-delay=-1s", "memory://somewhere",
		"consul://127.0.0.1:8500?dc=dc1", "consul://", "consul://10.0.0.1:8501?dc=dc2&ttl=10s&tls=true&tls-skip-verify=false",
		"consul://127.0.0.21:8500?confirm=127.0.0.11:8500,127.0.0.12:8500,servers,agents", "consul://[::1]:8500/",
		"consul://127.0.0.1:8500?ca-file=/etc/ssl/ca.pem&cert-file=c.pem&key-file=k.pem", "consul://:8500", "consul://[::1",
		"consul://127.0.0.1:8500/%zz", "consul://admin:hunter2@127.0.0.1:8500", "consul://admin:p@hunter2@[::1",
		"nacos://127.0.0.1:8848?namespace=public&group=DEFAULT_GROUP", "nacos://127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878",
		"nacos://127.0.0.1:8848/nacos?cluster=c&data-dir=/tmp/x&timeout=5s", "nacos://127.0.0.1:8848,,127.0.0.1:8868",
		"nacos://nacos:hunter2@127.0.0.1:8848", "nacos:///", "zookeeper://127.0.0.1:2181", "127.0.0.1:8500", "",
		"admin:hunter2@127.0.0.1:8500", "consul:admin:hunter2@127.0.0.1:8500", "//admin:hunter2@127.0.0.1:8500",
	} {
		f.Add(s)
	}
	const secret = "fuzz-s3cret"
	creds := Credentials{ConsulToken: secret, NacosUsername: "nacos", NacosPassword: secret}
	f.Fuzz(func(t *testing.T, raw string) {
		checkNoUserinfo(t, raw, "pa55-w0rd", creds)
		open, err := parse(raw, creds)
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "adapters: ") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("parse(%q): want one line starting \"adapters: \", got %q", raw, msg)
			}
			if strings.Contains(msg, secret) {
				t.Fatalf("parse(%q): want no credential in the error, got %q", raw, msg)
			}
			return
		}
		if open == nil {
			t.Fatalf("parse(%q): want an opener with a nil error, got nil", raw)
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("parse(%q) accepted what net/url refuses: %v", raw, err)
		}
		scheme := strings.ToLower(u.Scheme)
		if !slices.Contains(Schemes(), scheme) || u.User != nil {
			t.Fatalf("parse(%q) accepted scheme %q with userinfo %v", raw, u.Scheme, u.User != nil)
		}
		var nodes []string
		switch {
		case scheme == "nacos":
			nodes = strings.Split(u.Host, ",")
		case scheme == "consul" && u.Host != "": // "": the default address
			nodes = []string{u.Host}
		}
		for _, hp := range nodes {
			host, port, err := net.SplitHostPort(hp)
			p, perr := strconv.Atoi(port)
			if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
				t.Fatalf("parse(%q) accepted node %q, which is not host:port with a port in 1-65535", raw, hp)
			}
		}
		// Written back from its parts, the URL is accepted again.
		again := scheme + "://" + u.Host + u.EscapedPath()
		if u.RawQuery != "" || u.ForceQuery {
			again += "?" + u.RawQuery
		}
		if u.Fragment != "" {
			again += "#" + u.EscapedFragment()
		}
		if _, err := parse(again, creds); err != nil {
			t.Fatalf("parse(%q) accepted it, but refused it written back from its parts, %q: %v", raw, again, err)
		}
	})
}

// checkNoUserinfo puts credentials holding secret where they would be
// userinfo, after raw's "://" or, without one, at its start, and checks
// that parse refuses the result without showing secret, when net/url reads
// it as userinfo (or as the opaque part of a URL with no "//": the scheme
// forgotten), or cannot parse it at all.
func checkNoUserinfo(t *testing.T, raw, secret string, creds Credentials) {
	t.Helper()
	withCreds := "admin:" + secret + "@" + raw
	if j := strings.Index(raw, "://"); j >= 0 {
		withCreds = raw[:j+3] + "admin:" + secret + "@" + raw[j+3:]
	}
	u, err := url.Parse(withCreds)
	if err == nil && u.User == nil && !strings.Contains(u.Opaque, secret) {
		return // elsewhere than userinfo, such as in a query value
	}
	if _, err := parse(withCreds, creds); err == nil {
		t.Fatalf("parse(%q): want credentials in a URL refused, got no error", withCreds)
	} else if strings.Contains(err.Error(), secret) {
		t.Fatalf("parse(%q): want the error without the password, got %q", withCreds, err)
	}
}
