package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nacos-group/nacos-sdk-go/v2/clients"
	"github.com/nacos-group/nacos-sdk-go/v2/clients/naming_client"
	"github.com/nacos-group/nacos-sdk-go/v2/common/constant"
	"github.com/nacos-group/nacos-sdk-go/v2/common/logger"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

func newNacos(t *testing.T, opts ...nacos.Option) *nacos.Registry {
	t.Helper()
	base := []nacos.Option{
		nacos.WithAddress(nacosAddr()),
		nacos.WithCredentials(nacosUser(), nacosPass()),
		nacos.WithDataDir(t.TempDir()),
	}
	r, err := nacos.New(append(base, opts...)...)
	if err != nil {
		t.Fatalf("nacos.New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// nacosConsumer is what a consumer using nacos-sdk-go sees, through a naming
// client of its own: the healthy, enabled instances.
func nacosConsumer(t *testing.T) func(ctx context.Context, service string) ([]registry.Instance, error) {
	t.Helper()
	c := rawNacosClient(t, 5*time.Second)
	t.Cleanup(c.CloseClient)
	return func(ctx context.Context, service string) ([]registry.Instance, error) {
		return selectHealthy(ctx, c, service)
	}
}

// rawNacosClient makes a nacos-sdk-go naming client of its own on the
// standalone server, as a consumer would; the caller closes it. It puts
// back the process-wide logger that the SDK replaces, so that every client
// in the process logs (and so costs) the same.
func rawNacosClient(t *testing.T, timeout time.Duration) naming_client.INamingClient {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(nacosAddr())
	port, _ := strconv.ParseUint(portStr, 10, 64)
	dir := t.TempDir()
	prev := logger.GetLogger()
	c, err := clients.NewNamingClient(vo.NacosClientParam{
		ClientConfig: constant.NewClientConfig(
			constant.WithTimeoutMs(uint64(timeout/time.Millisecond)),
			constant.WithNotLoadCacheAtStart(true),
			constant.WithUpdateCacheWhenEmpty(true),
			constant.WithCacheDir(filepath.Join(dir, "cache")),
			constant.WithLogDir(filepath.Join(dir, "log")),
			constant.WithLogLevel("warn"),
			constant.WithUsername(nacosUser()),
			constant.WithPassword(nacosPass()),
		),
		ServerConfigs: []constant.ServerConfig{*constant.NewServerConfig(host, port)},
	})
	if prev != nil {
		logger.SetLogger(prev)
	}
	if err != nil {
		t.Fatalf("nacos client: %v", err)
	}
	return c
}

// nacosServerView lists the healthy, enabled instances of a service
// ("ip:port" each) as the Nacos at addr holds them, through its v3 admin
// API: the server's own state, with no client cache or subscription in
// between. It logs in with the test user on first use, and again when the
// token is refused (a restarted server). A service the server does not know
// has no instances. Safe for concurrent use.
func nacosServerView(addr string) func(ctx context.Context, service string) ([]string, error) {
	hc := &http.Client{}
	var mu sync.Mutex
	var token string
	login := func(ctx context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if token != "" {
			return token, nil
		}
		form := url.Values{"username": {nacosUser()}, "password": {nacosPass()}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/nacos/v1/auth/login", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var out struct{ AccessToken string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.AccessToken == "" {
			return "", fmt.Errorf("nacos %s: login as %s: HTTP %d, %v", addr, nacosUser(), resp.StatusCode, err)
		}
		token = out.AccessToken
		return token, nil
	}
	return func(ctx context.Context, service string) ([]string, error) {
		tok, err := login(ctx)
		if err != nil {
			return nil, err
		}
		q := url.Values{"serviceName": {service}, "groupName": {constant.DEFAULT_GROUP}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/nacos/v3/admin/ns/instance/list?"+q.Encode(), nil)
		req.Header.Set("accessToken", tok)
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			mu.Lock()
			token = ""
			mu.Unlock()
			return nil, fmt.Errorf("nacos %s: instance list: HTTP %d; logging in again on the next call", addr, resp.StatusCode)
		}
		var out struct {
			Code int
			Data json.RawMessage
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return nil, fmt.Errorf("nacos %s: instance list: HTTP %d: %v", addr, resp.StatusCode, err)
		}
		if out.Code != 0 {
			if strings.Contains(string(out.Data), "not found") {
				return nil, nil
			}
			return nil, fmt.Errorf("nacos %s: instance list of %s: code %d: %s", addr, service, out.Code, out.Data)
		}
		var list []struct {
			IP               string
			Port             int
			Enabled, Healthy bool
		}
		if err := json.Unmarshal(out.Data, &list); err != nil {
			return nil, fmt.Errorf("nacos %s: instance list of %s: %v", addr, service, err)
		}
		var eps []string
		for _, in := range list {
			if in.Enabled && in.Healthy {
				eps = append(eps, net.JoinHostPort(in.IP, strconv.Itoa(in.Port)))
			}
		}
		return eps, nil
	}
}

func selectHealthy(ctx context.Context, c naming_client.INamingClient, service string) ([]registry.Instance, error) {
	type result struct {
		list []registry.Instance
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// SelectInstances calls an empty list an error; SelectAllInstances
		// does not, so filter as SelectInstances(HealthyOnly) would.
		hosts, err := c.SelectAllInstances(vo.SelectAllInstancesParam{ServiceName: service})
		var out []registry.Instance
		for _, h := range hosts {
			if !h.Healthy || !h.Enable || h.Weight <= 0 {
				continue
			}
			out = append(out, registry.Instance{
				Service: service, Address: h.Ip, Port: int(h.Port), Metadata: h.Metadata, ID: h.Metadata[nacos.MetaID],
			})
		}
		ch <- result{out, err}
	}()
	select {
	case r := <-ch:
		return r.list, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestNacosContract(t *testing.T) {
	needNacos(t)
	registrytest.Run(t, registrytest.Harness{
		New:        func(t *testing.T) registry.Registry { return newNacos(t) },
		Consumer:   nacosConsumer(t),
		Timeout:    30 * time.Second,
		IgnoreTags: true, // Nacos has no tags
	})
}
