package integration

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
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
