package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/internal/readcap"
)

var (
	// ErrNoAnswer is wrapped by a Client's error when nothing listens at
	// the admin address (the connection was refused): the app is not
	// running, or runs without lameduck's admin endpoint.
	ErrNoAnswer = errors.New("admin: nothing answers")
	// ErrNotLameduck is wrapped by a Client's error when a 2xx answer's
	// body is not lameduck's JSON: something else listens at the address.
	ErrNotLameduck = errors.New("admin: not lameduck's JSON")
)

// StatusError is a non-2xx answer from the admin endpoint. Its message
// names the URL and the status with the first line of the body; it never
// contains the token.
type StatusError struct {
	Method string
	URL    string // the request's URL, which never carries the token
	Code   int
	Body   string // the body's first line, sanitised and shortened

	tokenSent bool
}

func (e *StatusError) Error() string {
	if e.Code == http.StatusUnauthorized {
		if e.tokenSent {
			return fmt.Sprintf("admin: %s refused the token; set --admin-token", e.URL)
		}
		return fmt.Sprintf("admin: %s needs a token; set --admin-token", e.URL)
	}
	msg := fmt.Sprintf("admin: %s %s answered %d %s", e.Method, e.URL, e.Code, http.StatusText(e.Code))
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// kindError is an error with its own message that errors.Is matches to a
// sentinel, keeping the cause for errors.Is/As.
type kindError struct {
	msg  string
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }
func (e *kindError) Unwrap() error        { return e.err }

// Client talks to a lameduck admin endpoint from another process: the
// prestop hook, `lameduck offline`, `lameduck status`. It is safe for
// concurrent use.
//
// When the endpoint answers 429 Too Many Requests (its long-poll cap is
// reached) a method waits and asks again, with internal/backoff's jittered
// delays from 1 s (the endpoint's Retry-After) up to 5 s, until it gets
// another answer or ctx ends (Wait: or its timeout passes).
//
// Every method's error is one line that names the URL and what to do. Its
// types: an error wrapping ErrNoAnswer when the connection is refused, a
// *StatusError for a non-2xx answer, an error wrapping ErrNotLameduck for
// a 2xx answer that is not lameduck's JSON, or one wrapping ctx.Err() when
// ctx ended. No error contains the token, even when the server echoes it.
type Client struct {
	base  string // scheme://host[/prefix], no trailing slash
	token string
	hc    *http.Client
	clk   clock.Clock // paces the retries after a 429
}

// ClientOption configures a Client.
type ClientOption func(*clientOptions)

type clientOptions struct {
	token string
	hc    *http.Client
}

func (o *clientOptions) setDefaults() {
	if o.hc == nil {
		// No Timeout: ctx bounds every call, and /wait long-polls.
		o.hc = &http.Client{}
	}
}

// WithClientToken sends "Authorization: Bearer token" with every request.
// The endpoint requires it for POST /offline when it has a token.
func WithClientToken(token string) ClientOption {
	return func(o *clientOptions) { o.token = token }
}

// WithHTTPClient sends requests through hc instead of a client on
// http.DefaultTransport. A Timeout on hc must outlast Wait's long-polls;
// prefer bounding calls with ctx.
func WithHTTPClient(hc *http.Client) ClientOption {
	return func(o *clientOptions) { o.hc = hc }
}

// NewClient returns a client for the admin endpoint at baseURL, such as
// "http://127.0.0.1:9901". The scheme must be http or https and the host
// is required; a bare "host:port" means http://host:port. A path is kept
// as a prefix (for an endpoint behind a proxy); credentials, a query or a
// fragment are refused. NewClient does no I/O.
func NewClient(baseURL string, opts ...ClientOption) (*Client, error) {
	var o clientOptions
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	base, err := parseBase(baseURL)
	if err != nil {
		return nil, err
	}
	for _, r := range o.token {
		if r < ' ' || r == 0x7f {
			// Do not echo the token, not even in part.
			return nil, errors.New("admin: the admin token contains a control character (a stray newline?); remove it")
		}
	}
	return &Client{base: base, token: o.token, hc: o.hc, clk: clock.Real{}}, nil
}

const exampleURL = "http://127.0.0.1:9901"

func parseBase(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", fmt.Errorf("admin: the admin URL is empty; give one such as %s", exampleURL)
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("admin: admin URL %q is not a URL such as %s: %v", raw, exampleURL, err)
	}
	switch {
	case u.User != nil:
		return "", fmt.Errorf("admin: admin URL %s carries credentials; drop them and set --admin-token", u.Redacted())
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("admin: admin URL %q has scheme %q; want http or https, such as %s", raw, u.Scheme, exampleURL)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("admin: admin URL %q has no host; give one such as %s", raw, exampleURL)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("admin: admin URL %q has a query or fragment; give only scheme, host and port, such as %s", raw, exampleURL)
	}
	return u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"), nil
}

// Status returns the endpoint's status (GET /status). It blocks until the
// answer arrives or ctx ends.
func (c *Client) Status(ctx context.Context) (drain.Status, error) {
	return c.status(ctx, http.MethodGet, "/status")
}

// Offline asks the app to go offline (POST /offline) and returns its status
// once the request is accepted; it does not wait for the drain (see Wait).
// It is idempotent. It blocks until the answer arrives or ctx ends.
func (c *Client) Offline(ctx context.Context) (drain.Status, error) {
	return c.status(ctx, http.MethodPost, "/offline")
}

// status makes a request whose answer is the status JSON.
func (c *Client) status(ctx context.Context, method, path string) (drain.Status, error) {
	body, u, err := c.do(ctx, method, path, nil)
	if err != nil {
		return drain.Status{}, err
	}
	s, ok := decodeStatus(body)
	if !ok {
		return drain.Status{}, c.notLameduck(u, "status", body)
	}
	return s, nil
}

// defaultPoll is what one long-poll asks for when Wait has no timeout; the
// server caps it anyway (WithMaxWait).
const defaultPoll = 5 * time.Minute

// Wait blocks until the app has reached phase p or a later one, timeout has
// passed, or ctx ends. It long-polls GET /wait, again and again, since the
// server caps each poll (WithMaxWait). A timeout <= 0 waits until ctx ends.
//
// When p is reached it returns Reached true with the status. When timeout
// passes first it returns Reached false with the latest status and a nil
// error: the wait is over, not failed. When ctx ends or a poll fails it
// returns the latest result (the zero value before any) and the error.
// At least one poll is made, so even a tiny timeout returns a status: if
// the endpoint refused every poll as busy (429) until timeout passed, that
// status is a GET /status.
func (c *Client) Wait(ctx context.Context, p drain.Phase, timeout time.Duration) (WaitResult, error) {
	if _, err := drain.ParsePhase(p.String()); err != nil {
		return WaitResult{}, fmt.Errorf("admin: cannot wait for %v: %v", p, err)
	}
	var deadline time.Time
	busyCtx := ctx // bounds the waits after a 429
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
		var cancel context.CancelFunc
		busyCtx, cancel = context.WithDeadlineCause(ctx, deadline, errTimeoutPassed)
		defer cancel()
	}
	var last WaitResult
	for {
		poll := defaultPoll
		if !deadline.IsZero() {
			poll = max(time.Until(deadline), time.Millisecond)
		}
		q := url.Values{"phase": {p.String()}, "timeout": {poll.String()}}
		body, u, err := c.send(ctx, busyCtx, http.MethodGet, "/wait", q)
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, errTimeoutPassed) {
				// Busy until the timeout passed: answer with the status.
				st, serr := c.Status(ctx)
				if serr != nil {
					return last, serr
				}
				return WaitResult{Reached: st.Phase >= p, Status: st}, nil
			}
			return last, err
		}
		res, ok := decodeWait(body)
		if !ok {
			return last, c.notLameduck(u, "wait", body)
		}
		last = res
		switch {
		case res.Reached:
			return res, nil
		case !deadline.IsZero() && !time.Now().Before(deadline):
			return res, nil
		case ctx.Err() != nil:
			return res, fmt.Errorf("admin: waiting at %s for %v: %w", c.base, p, ctx.Err())
		}
	}
}

// errTimeoutPassed is the cause of Wait's busyCtx ending at Wait's
// timeout, told apart from the end of the caller's ctx.
var errTimeoutPassed = errors.New("admin: the wait's timeout passed")

// busyPolicy paces the requests after a 429: from the endpoint's
// Retry-After up to 5 s.
var busyPolicy = backoff.Policy{Initial: retryAfter, Max: 5 * time.Second}

// maxBody bounds what the client reads of a 2xx answer, which it decodes;
// lameduck's JSON is a few kilobytes. Of any other answer it reads at most
// maxErrorBody, for the first line of its message.
const (
	maxBody      = 1 << 20
	maxErrorBody = 4 << 10
)

// do sends a request and returns the body of a 2xx answer, with the URL
// it asked (for messages). It asks again while the endpoint answers 429,
// until ctx ends.
func (c *Client) do(ctx context.Context, method, path string, q url.Values) ([]byte, string, error) {
	return c.send(ctx, ctx, method, path, q)
}

// send is do with the waits after a 429 bounded by busyCtx, which ends no
// later than ctx. Each request runs under ctx, not busyCtx, so that a
// long-poll the endpoint answers at busyCtx's deadline is not cut short.
// When busyCtx ends while the endpoint is busy, the error is a
// *backoff.GaveUpError holding the last 429's *StatusError and
// context.Cause(busyCtx).
func (c *Client) send(ctx, busyCtx context.Context, method, path string, q url.Values) ([]byte, string, error) {
	var body []byte
	var u string
	err := backoff.Retry(busyCtx, c.clk, busyPolicy, func(context.Context) error {
		var err error
		body, u, err = c.once(ctx, method, path, q)
		if err != nil && !isBusy(err) {
			return final{err}
		}
		return err
	}, nil)
	if f, ok := err.(final); ok {
		err = f.err
	}
	return body, u, err
}

// final marks an error not worth another request: any but a 429.
type final struct{ err error }

func (f final) Error() string { return f.err.Error() }
func (f final) Unwrap() error { return f.err }
func (final) Permanent() bool { return true }

// isBusy reports whether err is the endpoint's 429 Too Many Requests.
func isBusy(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusTooManyRequests
}

// once sends one request; see do.
func (c *Client) once(ctx context.Context, method, path string, q url.Values) ([]byte, string, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, u, fmt.Errorf("admin: %s %s: %w", method, u, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "lameduck-admin-client")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, u, c.transportError(ctx, method, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if err != nil {
			return nil, u, c.transportError(ctx, method, u, err)
		}
		line, _, _ := bytes.Cut(body, []byte("\n"))
		var e errorJSON
		if json.Unmarshal(line, &e) == nil && e.Error != "" {
			line = []byte(e.Error) // the endpoint's JSON refusal: its message
		}
		return nil, u, &StatusError{
			Method:    method,
			URL:       u,
			Code:      resp.StatusCode,
			Body:      c.excerpt(line, 200),
			tokenSent: c.token != "",
		}
	}
	body, err := readcap.ReadAll(resp.Body, maxBody, "the answer")
	if tl := (*readcap.TooLargeError)(nil); errors.As(err, &tl) {
		return nil, u, &kindError{
			msg:  fmt.Sprintf("admin: %s %s answered more than %s, which is not lameduck's JSON (a few kilobytes); is something else listening there?", method, u, readcap.Size(maxBody)),
			kind: ErrNotLameduck,
			err:  err,
		}
	}
	if err != nil {
		return nil, u, c.transportError(ctx, method, u, err)
	}
	return body, u, nil
}

func (c *Client) transportError(ctx context.Context, method, u string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("admin: %s %s: %w", method, u, ctx.Err())
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return &kindError{
			msg:  fmt.Sprintf("admin: nothing answers at %s (is the app running with lameduck's admin endpoint?)", c.base),
			kind: ErrNoAnswer,
			err:  err,
		}
	}
	// *url.Error repeats the method and URL; say them once.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("admin: %s %s: %w", method, u, err)
}

func (c *Client) notLameduck(u, what string, body []byte) error {
	return &kindError{
		msg:  fmt.Sprintf("admin: %s answered something that is not lameduck's %s JSON: %q", u, what, c.excerpt(body, 60)),
		kind: ErrNotLameduck,
	}
}

// excerpt returns up to the first n bytes of b for a one-line message: the
// token blanked out, invalid UTF-8 and control characters replaced, spaces
// trimmed.
func (c *Client) excerpt(b []byte, n int) string {
	s := string(b)
	if c.token != "" {
		// Before cutting, so that no part of the token survives a cut.
		s = strings.ReplaceAll(s, c.token, "[token]")
	}
	if len(s) > n {
		s = s[:n] // a rune cut in two becomes a space below
	}
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, " "))
	return strings.TrimSpace(s)
}

// statusJSON decodes a drain.Status and tells whether "phase" was there:
// the outer Phase shadows the embedded one.
type statusJSON struct {
	drain.Status
	Phase *drain.Phase `json:"phase"`
}

func decodeStatus(b []byte) (drain.Status, bool) {
	var w statusJSON
	if err := json.Unmarshal(b, &w); err != nil || w.Phase == nil {
		return drain.Status{}, false
	}
	s := w.Status
	s.Phase = *w.Phase
	return s, true
}

func decodeWait(b []byte) (WaitResult, bool) {
	var w struct {
		Reached *bool           `json:"reached"`
		Status  json.RawMessage `json:"status"`
	}
	if err := json.Unmarshal(b, &w); err != nil || w.Reached == nil {
		return WaitResult{}, false
	}
	s, ok := decodeStatus(w.Status)
	if !ok {
		return WaitResult{}, false
	}
	return WaitResult{Reached: *w.Reached, Status: s}, true
}
