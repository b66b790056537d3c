package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
)

// Config shapes a demo run.
type Config struct {
	Registry registry.Registry                // where the instances register; required
	Workers  int                              // concurrent load workers; default 8
	Settle   time.Duration                    // time between steps; default 1.5s
	Budget   time.Duration                    // lameduck's deadline budget; default 20s
	Quiet    time.Duration                    // lameduck's quiet window; default 250ms
	Log      func(format string, args ...any) // progress lines; called one at a time
}

// Row is one line of the result table.
type Row struct {
	Way          string
	Endpoint     string
	Sent, Failed int64
	Offline      time.Duration // from the stop request to the process being gone
	Confirmation time.Duration // deregistration to the registry's confirmation; 0 if not waited
	Longest      time.Duration // the longest request the consumer saw succeed
	Errors       map[string]int64
	Err          error // what the offline returned
}

// Result is what a demo run measured.
type Result struct {
	Service string
	Rows    []Row
}

// Run starts three instances, puts them under load, takes one down the
// naive way and one the lameduck way, and returns what the consumer saw.
// Everything it registered is deregistered before it returns.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Registry == nil {
		return Result{}, errors.New("demo: no registry; pass one, e.g. memory://?push-delay=200ms")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 1500 * time.Millisecond
	}
	if cfg.Budget <= 0 {
		cfg.Budget = 20 * time.Second
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = drain.DefaultQuietWindow
	}
	// Events of several registries arrive concurrently; Log is called one
	// at a time.
	var logMu sync.Mutex
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			logMu.Lock()
			defer logMu.Unlock()
			cfg.Log(format, args...)
		}
	}
	reg := cfg.Registry
	service := fmt.Sprintf("lameduck-demo-%06d", rand.IntN(1_000_000))
	res := Result{Service: service}

	var insts []*Instance
	defer func() {
		// Leave nothing registered or running, whatever happened.
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, in := range insts {
			_ = reg.Deregister(cctx, in.Inst)
			_ = in.Server.Close()
		}
	}()
	for n := 1; n <= 3; n++ {
		in, err := StartInstance(service, n)
		if err != nil {
			return res, err
		}
		insts = append(insts, in)
		if err := reg.Register(ctx, in.Inst); err != nil {
			return res, fmt.Errorf("demo: register %s in %s: %w", in.Inst.Endpoint(), reg, err)
		}
	}
	logf("started 3 instances of %s on %s", service, reg)

	load := NewLoad(reg, service, cfg.Workers, 3)
	defer load.Close()
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadErr := make(chan error, 1)
	go func() { loadErr <- load.Run(lctx) }()
	select {
	case <-load.Ready():
	case err := <-loadErr:
		return res, err
	case <-time.After(30 * time.Second):
		return res, fmt.Errorf("demo: the load generator's watch on %s did not show 3 instances within 30s", reg)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	logf("load running with %d workers", cfg.Workers)
	if err := pause(ctx, loadErr, cfg.Settle); err != nil {
		return res, err
	}

	// The naive way: deregister and shut down in the same breath, as most
	// frameworks do on SIGTERM.
	naive := insts[0]
	logf("naive: deregistering %s and shutting it down at once", naive.Inst.Endpoint())
	start := time.Now()
	var wg sync.WaitGroup
	var deregErr error
	wg.Add(1)
	go func() { defer wg.Done(); deregErr = reg.Deregister(ctx, naive.Inst) }()
	shutErr := naive.Shutdown(ctx)
	naiveOffline := time.Since(start)
	wg.Wait()
	naiveRow := Row{Way: "naive", Endpoint: naive.Inst.Endpoint(), Offline: naiveOffline, Err: errors.Join(deregErr, shutErr)}
	if err := pause(ctx, loadErr, cfg.Settle); err != nil {
		return res, err
	}

	// The lameduck way.
	ld := insts[1]
	logf("lameduck: taking %s offline", ld.Inst.Endpoint())
	coord, err := drain.New(ld.Tracker,
		drain.WithRegistries(reg),
		drain.WithInstance(ld.Inst),
		drain.WithBudget(cfg.Budget),
		drain.WithQuietWindow(cfg.Quiet),
		drain.WithStopHook("http server", ld.Shutdown),
		drain.WithEventHook(func(e drain.Event) {
			switch e.Kind {
			case drain.EventPhase:
				logf("lameduck: %-13s at %6s, %d in flight", e.Phase, e.Elapsed.Round(time.Millisecond), e.InFlight)
			case drain.EventConfirmed:
				logf("lameduck: %s confirmed the instance is gone after %s", e.Registry, e.Latency.Round(time.Millisecond))
			case drain.EventRetry, drain.EventGaveUp:
				logf("lameduck: %s %s: %v", e.Kind, e.Registry, e.Err)
			case drain.EventView:
				logf("lameduck: %s server %s %s after %s", e.Registry, e.View, e.ViewKind, e.Latency.Round(time.Millisecond))
			}
		}),
	)
	if err != nil {
		return res, err
	}
	start = time.Now()
	report, offErr := coord.Offline(ctx)
	ldRow := Row{Way: "lameduck", Endpoint: ld.Inst.Endpoint(), Offline: time.Since(start), Err: offErr}
	for _, r := range report.Registries {
		ldRow.Confirmation = max(ldRow.Confirmation, r.ConfirmLatency)
	}
	if err := pause(ctx, loadErr, cfg.Settle/2); err != nil {
		return res, err
	}
	stopLoad()
	if err := <-loadErr; err != nil {
		return res, err
	}

	for _, row := range []*Row{&naiveRow, &ldRow} {
		c := load.Counts(row.Endpoint)
		row.Sent, row.Failed, row.Longest, row.Errors = c.Sent, c.Failed, c.Longest, c.Errors
	}
	res.Rows = []Row{naiveRow, ldRow}
	return res, nil
}

// pause waits d, failing early if the load generator failed or ctx ended.
func pause(ctx context.Context, loadErr chan error, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case err := <-loadErr:
		loadErr <- err
		if err == nil {
			err = errors.New("demo: load generator stopped early")
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PrintTable writes the result as an aligned table, then the failure
// reasons.
func PrintTable(w io.Writer, res Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "way\tinstance\tsent\tfailed\toffline\tconfirmation\tlongest request\t")
	for _, r := range res.Rows {
		conf := "not waited"
		if r.Confirmation > 0 {
			conf = r.Confirmation.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t\n", r.Way, r.Endpoint, r.Sent, r.Failed,
			r.Offline.Round(time.Millisecond), conf, r.Longest.Round(time.Millisecond))
	}
	tw.Flush()
	for _, r := range res.Rows {
		if len(r.Errors) > 0 {
			keys := make([]string, 0, len(r.Errors))
			for k := range r.Errors {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%d %s", r.Errors[k], k))
			}
			fmt.Fprintf(w, "%s failures: %s\n", r.Way, strings.Join(parts, ", "))
		}
		if r.Err != nil {
			fmt.Fprintf(w, "%s offline error: %v\n", r.Way, r.Err)
		}
	}
}

// Failed returns the rows' failed counts by way, for tests.
func (r Result) Failed(way string) (int64, bool) {
	i := slices.IndexFunc(r.Rows, func(row Row) bool { return row.Way == way })
	if i < 0 {
		return 0, false
	}
	return r.Rows[i].Failed, true
}
