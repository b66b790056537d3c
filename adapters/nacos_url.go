package adapters

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/lameduck/lameduck/adapters/nacos"
)

func init() { openers["nacos"] = openNacos }

// openNacos reads nacos://host:port[,host:port...][?namespace=NS&group=G&cluster=C&data-dir=DIR&timeout=5s].
// Several hosts name the nodes of one cluster: the client fails over among
// them, and the confirmation waits for every node's own push.
func openNacos(u *url.URL, creds Credentials) (openFunc, error) {
	q := u.Query()
	if err := params("nacos", q, "namespace", "group", "cluster", "data-dir", "timeout"); err != nil {
		return nil, err
	}
	if u.Host == "" {
		return nil, fmt.Errorf("adapters: nacos URL has no host; use nacos://127.0.0.1:8848")
	}
	if u.Path != "" && u.Path != "/" && u.Path != "/nacos" {
		return nil, fmt.Errorf("adapters: nacos URL takes no path, got %q; use nacos://127.0.0.1:8848", u.Path)
	}
	nodes := strings.Split(u.Host, ",")
	for _, n := range nodes {
		if err := checkHostPort("nacos", n); err != nil {
			if len(nodes) > 1 {
				err = fmt.Errorf("%w; list a cluster's nodes as nacos://host:port,host:port", err)
			}
			return nil, err
		}
	}
	opts := []nacos.Option{nacos.WithAddresses(nodes...)}
	// "public" is how users name the default namespace; its ID is empty.
	if ns := q.Get("namespace"); ns != "" && ns != "public" {
		opts = append(opts, nacos.WithNamespace(ns))
	}
	if g := q.Get("group"); g != "" {
		opts = append(opts, nacos.WithGroup(g))
	}
	if c := q.Get("cluster"); c != "" {
		opts = append(opts, nacos.WithCluster(c))
	}
	if d := q.Get("data-dir"); d != "" {
		opts = append(opts, nacos.WithDataDir(d))
	}
	if s := q.Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("adapters: nacos URL parameter timeout=%q is not a positive duration such as 5s", s)
		}
		opts = append(opts, nacos.WithTimeout(d))
	}
	if creds.NacosUsername != "" || creds.NacosPassword != "" {
		if creds.NacosUsername == "" || creds.NacosPassword == "" {
			return nil, fmt.Errorf("adapters: nacos needs both a user name and a password, or neither")
		}
		opts = append(opts, nacos.WithCredentials(creds.NacosUsername, creds.NacosPassword))
	}
	return func() (Registry, error) { return nacos.New(opts...) }, nil
}
