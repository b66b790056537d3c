// Package probe holds the checks that say whether a copy of a service can
// take traffic (readiness) or is still alive (liveness): what the supervisor
// polls before it registers a copy, and what an app that links lameduck
// passes to lameduck.WithReady. It imports only the standard library and
// works on every OS, so the library can use it without the supervisor.
package probe

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Check is a readiness or liveness check of one copy of a service. port is
// the port that copy serves on (the supervisor's Spec.Instance.Port, or
// Spec.StandbyPort for the second copy); a check must look at that copy,
// not another one. A Check returns nil when the copy passes; it must honour
// ctx and return once ctx ends.
type Check func(ctx context.Context, port int) error

// At returns c fixed to the copy on port, in the form lameduck.WithReady
// takes, for an app whose one copy's port is known. With port 0 a check
// that substitutes ports (HTTP) leaves PortPlaceholder as it is.
func (c Check) At(port int) func(ctx context.Context) error {
	return func(ctx context.Context) error { return c(ctx, port) }
}

// PortPlaceholder, written in HTTP's URL (and in the supervisor's
// Spec.Args, or a `lameduck run` flag), stands for the port of the copy at
// hand.
const PortPlaceholder = "{port}"

// client closes every connection after its request, so that a check never
// leaves an idle keep-alive connection that would count as in flight on the
// copy's port.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// HTTP returns a check that GETs url and passes on a 2xx status. Every
// PortPlaceholder in url is replaced with the port of the copy being
// checked (when that port is above 0), so one check serves a standby on
// another port as well. Each call honours ctx and opens a fresh connection
// that it closes, reading at most 4 KiB of the body; the check is safe for
// concurrent use.
func HTTP(url string) Check {
	return func(ctx context.Context, port int) error {
		u := url
		if port > 0 {
			u = strings.ReplaceAll(u, PortPlaceholder, strconv.Itoa(port))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return fmt.Errorf("probe: check %s: %w", u, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("probe: check: %w", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("probe: check %s: status %s", u, resp.Status)
		}
		return nil
	}
}
