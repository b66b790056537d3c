package supervisor

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// checkClient closes every connection after its request, so that a check
// never leaves an idle keep-alive connection that would count as in flight
// on the child's port.
var checkClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// HTTPCheck returns a check for Spec.Ready or Spec.Live that GETs url and
// passes on a 2xx status. Each call honours ctx and opens a fresh
// connection that it closes; it is safe for concurrent use.
func HTTPCheck(url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("supervisor: check %s: %w", url, err)
		}
		resp, err := checkClient.Do(req)
		if err != nil {
			return fmt.Errorf("supervisor: check: %w", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("supervisor: check %s: status %s", url, resp.Status)
		}
		return nil
	}
}
