package nacos

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/nacos-group/nacos-sdk-go/v2/model"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/internal/snapshot"
	"github.com/lameduck/lameduck/registry"
)

// Watch subscribes to service in the backend's group. The first Next
// returns the server's current list; later ones follow the server's pushes.
func (r *Registry) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	if service == "" {
		return nil, r.wrap("watch", errors.New("empty service name"))
	}
	if err := ctx.Err(); err != nil {
		return nil, r.wrap("watch", err)
	}
	w := &watcher{r: r, service: service, slot: snapshot.New(sameSet)}
	w.param = &vo.SubscribeParam{
		ServiceName: service,
		GroupName:   r.o.group,
		SubscribeCallback: func(hosts []model.Instance, err error) {
			if err != nil {
				return // the SDK retries; the last good list stands
			}
			w.set(toInstances(service, hosts), true)
		},
	}
	if err := r.call(ctx, "watch", func() (bool, error) { return true, r.c.Subscribe(w.param) }); err != nil {
		return nil, err
	}
	// A second subscriber to an already-cached service gets no push, so
	// fetch the current list once. A push that arrived meanwhile is newer.
	var hosts []model.Instance
	err := r.call(ctx, "watch", func() (bool, error) {
		var err error
		hosts, err = r.c.SelectAllInstances(vo.SelectAllInstancesParam{ServiceName: service, GroupName: r.o.group})
		return true, err
	})
	if err != nil {
		_ = w.Stop()
		return nil, err
	}
	w.set(toInstances(service, hosts), false)
	unbind := context.AfterFunc(ctx, func() { _ = w.Stop() })
	w.mu.Lock()
	w.unbind = unbind
	w.mu.Unlock()
	return w, nil
}

type watcher struct {
	r       *Registry
	service string
	param   *vo.SubscribeParam // the SDK matches the callback by this pointer
	slot    *snapshot.Slot

	mu     sync.Mutex
	unbind func() bool
	pushed bool // a push has arrived, newer than the initial fetch
}

// set offers a list to the reader; the initial fetch never overwrites a push.
func (w *watcher) set(list []registry.Instance, push bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !push && w.pushed {
		return
	}
	w.pushed = w.pushed || push
	w.slot.Put(list)
}

func (w *watcher) Next(ctx context.Context) ([]registry.Instance, error) { return w.slot.Next(ctx) }

func (w *watcher) Stop() error {
	if !w.slot.Stop() {
		return nil
	}
	w.mu.Lock()
	unbind := w.unbind
	w.mu.Unlock()
	if unbind != nil {
		unbind()
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.r.o.timeout)
	defer cancel()
	_ = w.r.call(ctx, "unwatch", func() (bool, error) { return true, w.r.c.Unsubscribe(w.param) })
	return nil
}

// toInstances keeps what consumers route to: enabled, healthy, weight > 0.
// It runs on every push, over the whole service (thousands of instances):
// the metadata map is shared with the SDK's, which decodes a fresh one per
// push, unless lameduck's ID has to be taken out of it, and the sort builds
// no strings.
func toInstances(service string, hosts []model.Instance) []registry.Instance {
	out := make([]registry.Instance, 0, len(hosts))
	for _, h := range hosts {
		if !h.Enable || !h.Healthy || h.Weight <= 0 {
			continue
		}
		in := registry.Instance{
			Service: service, Address: h.Ip, Port: int(h.Port),
			Cluster: h.ClusterName, Weight: h.Weight, Metadata: h.Metadata,
		}
		if id, ok := h.Metadata[MetaID]; ok {
			in.ID = id
			in.Metadata = make(map[string]string, len(h.Metadata)-1)
			for k, v := range h.Metadata {
				if k != MetaID {
					in.Metadata[k] = v
				}
			}
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b registry.Instance) int {
		return cmp.Or(strings.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port), strings.Compare(a.Cluster, b.Cluster))
	})
	return out
}

func sameSet(a, b []registry.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y registry.Instance) bool {
		return x.ID == y.ID && x.Address == y.Address && x.Port == y.Port && x.Weight == y.Weight
	})
}
