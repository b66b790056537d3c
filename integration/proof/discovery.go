package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/nacos-group/nacos-sdk-go/v2/clients"
	"github.com/nacos-group/nacos-sdk-go/v2/clients/naming_client"
	"github.com/nacos-group/nacos-sdk-go/v2/common/constant"
	"github.com/nacos-group/nacos-sdk-go/v2/model"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"
)

// A watch feeds a consumer's list from the registry the way that registry's
// own client does for any consumer. stop ends it.
type watch interface{ stop() }

// consulWatch runs blocking queries on the passing health list of service,
// each returning as soon as the list changes, and hands every list to
// update. stale reads the answering server's own state (?stale) instead of
// having it forwarded to the leader.
type consulWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startConsulWatch(addr, token string, stale bool, service string, update func([]string)) (*consulWatch, error) {
	cl, err := api.NewClient(&api.Config{Address: addr, Token: token})
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &consulWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var index uint64
		backoff := 50 * time.Millisecond
		for ctx.Err() == nil {
			q := (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute, AllowStale: stale}).WithContext(ctx)
			entries, meta, err := cl.Health().Service(service, "", true, q)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				fmt.Fprintf(os.Stderr, "proof: consul watch of %s on %s: %v; retrying in %v\n", service, addr, err, backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			backoff = 50 * time.Millisecond
			// Consul's rules for blocking queries: an index that goes
			// backwards resets the wait; 0 is never waited on.
			switch {
			case meta.LastIndex < index, meta.LastIndex == 0:
				index = 0
			default:
				index = meta.LastIndex
			}
			list := make([]string, 0, len(entries))
			for _, e := range entries {
				host := e.Service.Address
				if host == "" {
					host = e.Node.Address
				}
				list = append(list, net.JoinHostPort(host, strconv.Itoa(e.Service.Port)))
			}
			update(list)
		}
	}()
	return w, nil
}

func (w *consulWatch) stop() {
	w.cancel()
	<-w.done
}

// nacosWatch subscribes to service with nacos-sdk-go's naming client: the
// server pushes every change over the client's gRPC connection. Like the
// SDK's SelectInstances, it keeps what consumers route to: enabled, healthy
// instances with a weight above zero.
type nacosWatch struct {
	c     naming_client.INamingClient
	param *vo.SubscribeParam
}

func startNacosWatch(addr, user, password, dir, service string, update func([]string)) (*nacosWatch, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("nacos address %q: want host:port", addr)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("nacos address %q: want host:port", addr)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cc := constant.NewClientConfig(
		constant.WithTimeoutMs(5000),
		constant.WithNotLoadCacheAtStart(true),
		constant.WithUpdateCacheWhenEmpty(true),
		constant.WithCacheDir(filepath.Join(dir, "cache")),
		constant.WithLogDir(filepath.Join(dir, "log")),
		constant.WithLogLevel("error"),
		constant.WithUsername(user),
		constant.WithPassword(password),
	)
	c, err := clients.NewNamingClient(vo.NacosClientParam{
		ClientConfig:  cc,
		ServerConfigs: []constant.ServerConfig{*constant.NewServerConfig(host, port)},
	})
	if err != nil {
		return nil, fmt.Errorf("nacos naming client for %s: %w", addr, err)
	}
	w := &nacosWatch{c: c}
	w.param = &vo.SubscribeParam{
		ServiceName: service,
		GroupName:   constant.DEFAULT_GROUP,
		SubscribeCallback: func(hosts []model.Instance, err error) {
			if err != nil {
				return
			}
			list := make([]string, 0, len(hosts))
			for _, h := range hosts {
				if h.Enable && h.Healthy && h.Weight > 0 {
					list = append(list, net.JoinHostPort(h.Ip, strconv.FormatUint(h.Port, 10)))
				}
			}
			update(list)
		},
	}
	if err := c.Subscribe(w.param); err != nil {
		c.CloseClient()
		return nil, fmt.Errorf("nacos subscribe to %s: %w", service, err)
	}
	return w, nil
}

func (w *nacosWatch) stop() {
	_ = w.c.Unsubscribe(w.param)
	w.c.CloseClient()
}
