package supervisor

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Check is a readiness or liveness check of one copy of the child. port is
// the port that copy serves on (Spec.Instance.Port, or Spec.StandbyPort for
// the second copy); a check must look at that copy, not the other one. It
// must honour ctx.
type Check func(ctx context.Context, port int) error

// PortPlaceholder, written in Spec.Args, in HTTPCheck's URL or in a
// `lameduck run` flag, stands for the port of the copy at hand.
const PortPlaceholder = "{port}"

// checkClient closes every connection after its request, so that a check
// never leaves an idle keep-alive connection that would count as in flight
// on the child's port.
var checkClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// HTTPCheck returns a check that GETs url and passes on a 2xx status. Every
// "{port}" in url is replaced with the port of the copy being checked, so
// one check serves a standby on another port as well. Each call honours ctx
// and opens a fresh connection that it closes; it is safe for concurrent
// use.
func HTTPCheck(url string) Check {
	return func(ctx context.Context, port int) error {
		u := url
		if port > 0 {
			u = strings.ReplaceAll(u, PortPlaceholder, strconv.Itoa(port))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return fmt.Errorf("supervisor: check %s: %w", u, err)
		}
		resp, err := checkClient.Do(req)
		if err != nil {
			return fmt.Errorf("supervisor: check: %w", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("supervisor: check %s: status %s", u, resp.Status)
		}
		return nil
	}
}
