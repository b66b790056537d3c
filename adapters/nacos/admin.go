package nacos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/lameduck/lameduck/internal/readcap"
	"github.com/lameduck/lameduck/registry"
)

// Instances that another client registered are changed through the server's
// HTTP admin API (Nacos 3.0 and later), since Nacos lets only the gRPC
// connection that registered an ephemeral instance change or remove it:
//
//	GET /nacos/v3/admin/ns/instance           the instance as consumers see it
//	PUT /nacos/v3/admin/ns/instance/partial   enabled (and weight), form-encoded
//
// with namespaceId, groupName, serviceName, clusterName, ip and port naming
// the instance, and the token from POST /nacos/v1/auth/login in the
// accessToken header (never in the URL, which would put it in errors).
//
// The server keeps the change as an instance metadata override keyed by
// ip:port and cluster, applies it to whichever client publishes that
// endpoint, and pushes the result to subscribers. A fresh override carries
// weight 1 unless told otherwise, so the current weight is sent with it.

const (
	loginPath         = "/nacos/v1/auth/login"
	adminInstancePath = "/nacos/v3/admin/ns/instance"
	adminPatchPath    = adminInstancePath + "/partial"

	// resultNotFound is the Nacos result code for "resource not found".
	resultNotFound = 20004
)

var (
	// ErrAccessDenied is matched (errors.Is) by errors from the HTTP admin
	// API when the server refused the login or the user's rights.
	ErrAccessDenied = errors.New("nacos: access denied")
	// ErrInstanceNotFound is matched (errors.Is) by errors from Disable and
	// Enable when the server holds no such instance.
	ErrInstanceNotFound = errors.New("nacos: instance not found")
)

// StatusError is a refusal from the server's HTTP API. It matches
// ErrAccessDenied (HTTP 401, 403), ErrInstanceNotFound (HTTP 404 with
// Nacos result code 20004) and registry.ErrRejected (HTTP 400, 401, 403:
// not worth retrying) under errors.Is.
type StatusError struct {
	Code    int    // HTTP status
	Result  int    // the Nacos result code in the body, 0 if none
	Message string // the server's message, without credentials
}

func (e *StatusError) Error() string {
	msg := "HTTP " + strconv.Itoa(e.Code)
	if e.Result != 0 {
		msg += ", code " + strconv.Itoa(e.Result)
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Is reports whether e is one of the package's sentinel errors.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrAccessDenied:
		return e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden
	case ErrInstanceNotFound:
		return e.Code == http.StatusNotFound && e.Result == resultNotFound
	case registry.ErrRejected:
		// A refusal retrying cannot change: bad credentials or rights, a
		// malformed request. Not 404 (the instance may yet appear), 408
		// or 429 (come back later).
		return e.Code == http.StatusBadRequest || e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden
	}
	return false
}

// Permanent reports whether retrying cannot change the refusal (it is
// registry.ErrRejected), which is what lameduck's one retry loop asks.
func (e *StatusError) Permanent() bool { return e.Is(registry.ErrRejected) }

// adminInstance is the part of the admin API's instance that matters here.
type adminInstance struct {
	Enabled bool    `json:"enabled"`
	Weight  float64 `json:"weight"`
}

// adminResult is the admin API's answer envelope.
type adminResult struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// setEnabledRemote sets enabled on an instance this backend did not
// register, through the admin API. It logs in afresh each time (no token
// is kept), and the whole exchange is bounded by ctx and the backend's
// timeout.
func (r *Registry) setEnabledRemote(ctx context.Context, op string, i registry.Instance, on bool) error {
	if err := i.Validate(); err != nil {
		return r.wrap(op, err)
	}
	if err := r.checkNamespace(i); err != nil {
		return r.wrap(op, err)
	}
	if err := ctx.Err(); err != nil {
		return r.wrap(op, err)
	}
	return r.call(ctx, op, func() (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, r.o.timeout)
		defer cancel()
		return true, r.patchEnabled(ctx, i, on)
	})
}

func (r *Registry) patchEnabled(ctx context.Context, i registry.Instance, on bool) error {
	token, err := r.login(ctx)
	if err != nil {
		return err
	}
	id := r.adminID(i)
	var cur adminInstance
	if err := r.admin(ctx, i, token, http.MethodGet, adminInstancePath, id, &cur); err != nil {
		return err
	}
	if cur.Enabled == on {
		return nil // nothing to change; no override is written
	}
	form := url.Values{}
	for k, v := range id {
		form[k] = v
	}
	form.Set("enabled", strconv.FormatBool(on))
	form.Set("weight", strconv.FormatFloat(cur.Weight, 'f', -1, 64))
	return r.admin(ctx, i, token, http.MethodPut, adminPatchPath, form, nil)
}

// login returns an access token, or "" when the backend has no credentials.
func (r *Registry) login(ctx context.Context) (string, error) {
	if r.o.username == "" {
		return "", nil
	}
	form := url.Values{"username": {r.o.username}, "password": {r.o.password}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+r.o.addr+loginPath, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("login request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	body, err := r.do(req, "")
	if err != nil {
		if errors.Is(err, ErrAccessDenied) {
			return "", fmt.Errorf("login as %q refused (%w); check NACOS_USERNAME and NACOS_PASSWORD", r.o.username, err)
		}
		return "", fmt.Errorf("login as %q: %w", r.o.username, err)
	}
	var tok struct {
		AccessToken string `json:"accessToken"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" {
		return "", fmt.Errorf("login as %q: the answer holds no access token", r.o.username)
	}
	return tok.AccessToken, nil
}

// admin sends one admin API request for instance i and decodes the answer's
// data into out, when out is not nil. The token goes in a header.
func (r *Registry) admin(ctx context.Context, i registry.Instance, token, method, path string, params url.Values, out any) error {
	u := "http://" + r.o.addr + path
	var body io.Reader
	if method == http.MethodGet {
		u += "?" + params.Encode()
	} else {
		body = strings.NewReader(params.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("admin request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.Header.Set("accessToken", token)
	}
	data, err := r.do(req, token)
	var se *StatusError
	switch {
	case errors.As(err, &se) && se.Is(ErrAccessDenied):
		if r.o.username == "" {
			return fmt.Errorf("the server wants credentials to change instance %s of %q (%w); set NACOS_USERNAME and NACOS_PASSWORD", i.Endpoint(), i.Service, err)
		}
		return fmt.Errorf("user %q may not change instance %s of %q in group %q, namespace %q (%w); check NACOS_USERNAME and NACOS_PASSWORD, and that the user may write there", r.o.username, i.Endpoint(), i.Service, r.group(i), r.namespaceName(), err)
	case errors.As(err, &se) && se.Is(ErrInstanceNotFound):
		return fmt.Errorf("instance %s of service %q (group %q, cluster %q, namespace %q) not found on the server (%w)", i.Endpoint(), i.Service, r.group(i), r.cluster(i), r.namespaceName(), err)
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return fmt.Errorf("the server has no admin API at %s (%w); changing an instance another client registered needs Nacos 3.0 or later", path, err)
	case err != nil:
		return err
	}
	var res adminResult
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s %s: the answer is not a Nacos result: %v", method, path, err)
	}
	if res.Code != 0 {
		return &StatusError{Code: http.StatusOK, Result: res.Code, Message: r.redact(res.Message, token)}
	}
	if out != nil {
		if err := json.Unmarshal(res.Data, out); err != nil {
			return fmt.Errorf("%s %s: unexpected data in the answer: %v", method, path, err)
		}
	}
	return nil
}

// maxAnswer bounds the admin API answers read: one instance, or a login
// token, is well under a kilobyte. Of an error answer the first
// maxErrorAnswer bytes are read, for its message.
const (
	maxAnswer      = 1 << 20
	maxErrorAnswer = 64 << 10
)

// do sends req and returns the body of a 200 answer, or a *StatusError with
// the server's message. Transport errors name the URL, which holds no
// credentials.
func (r *Registry) do(req *http.Request, token string) ([]byte, error) {
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		body, err := readcap.ReadAll(resp.Body, maxAnswer, "the answer")
		if err != nil {
			return nil, fmt.Errorf("%s %s: read the answer: %w", req.Method, req.URL.Path, err)
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read the answer: %w", req.Method, req.URL.Path, err)
	}
	se := &StatusError{Code: resp.StatusCode}
	var res adminResult
	if json.Unmarshal(body, &res) == nil && res.Code != 0 {
		se.Result, se.Message = res.Code, res.Message
		var detail string
		if json.Unmarshal(res.Data, &detail) == nil && detail != "" {
			se.Message += ": " + detail
		}
	} else {
		se.Message = strings.TrimSpace(string(body))
		if len(se.Message) > 200 {
			se.Message = se.Message[:200] + "..."
		}
	}
	se.Message = r.redact(se.Message, token)
	return nil, se
}

// redact removes the password and token from a server message.
func (r *Registry) redact(msg, token string) string {
	for _, s := range []string{token, r.o.password} {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "REDACTED")
		}
	}
	return msg
}

func (r *Registry) namespaceName() string {
	if r.o.namespace == "" {
		return "public"
	}
	return r.o.namespace
}
