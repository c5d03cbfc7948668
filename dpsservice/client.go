// Package dpsservice is a client of the Azure IoT Hub Device Provisioning
// Service (DPS) service API: individual enrollments and enrollment groups
// (one at a time, in bulk operations of up to ten, and by paged query) and
// device registration states, api-version 2021-10-01.
//
// It signs requests with a shared access policy key (a connection string,
// see ParseConnectionString) or with Microsoft Entra ID bearer tokens from a
// TokenSource (package dpsservice/entra adapts azidentity). Each method is
// one HTTP transaction: there is no retry loop here. Failures are *Error
// values that Classify sorts into retryable, permanent and fatal, with Hint
// for what to fix; pacing and retries are the caller's. No error or log
// text carries a key or token.
//
// The package uses only the standard library and imports none of
// dps-batch's packages, so any Go program can use it.
package dpsservice

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults for the zero values of Config fields.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultUserAgent        = "dps-batch/dev"
	DefaultMaxResponseBytes = 8 << 20
)

// Header names the service API uses.
const (
	HeaderRequestID       = "x-ms-request-id"
	HeaderClientRequestID = "x-ms-client-request-id"
	HeaderErrorCode       = "x-ms-error-code"
	HeaderContinuation    = "x-ms-continuation"
	HeaderMaxItemCount    = "x-ms-max-item-count"
	HeaderRetryAfter      = "Retry-After"
)

// Config configures a Client. The zero value of each optional field selects
// the documented default.
type Config struct {
	// Host is the service endpoint: "NAME.azure-devices-provisioning.net",
	// "host:port" or "https://host[:port]" (no path). "" means the host
	// of a *SharedAccessKey Credential. Only https is used.
	Host string
	// Credential signs every request; required.
	Credential Credential
	// APIVersion is the api-version query value; "" means DefaultAPIVersion.
	APIVersion string
	// Timeout bounds one HTTP transaction, body included; 0 means 30s.
	Timeout time.Duration
	// RootCAs verifies the server certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// HTTPClient sends the requests; nil means a client of this package's
	// own (HTTP/1.1 and HTTP/2, proxy from the environment, RootCAs).
	// Redirects are refused whichever client is used.
	HTTPClient *http.Client
	// UserAgent is the User-Agent header; "" means "dps-batch/dev".
	UserAgent string
	// Now is the clock of Retry-After dates; nil means time.Now.
	Now func() time.Time
	// MaxResponseBytes bounds the body read from any response; 0 means 8 MiB.
	MaxResponseBytes int64
}

// Client talks to the service API of one DPS instance. It is safe for
// concurrent use.
type Client struct {
	cfg   Config
	base  string // "https://host[:port]"
	host  string // host[:port]
	query string // "api-version=…"
	hc    *http.Client
}

// NewClient validates cfg, fills in defaults and returns a Client. Errors
// match ErrInvalidConfig.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Credential == nil {
		return nil, fmt.Errorf("%w: no credential", ErrInvalidConfig)
	}
	if cfg.Host == "" {
		if k, ok := cfg.Credential.(*SharedAccessKey); ok {
			cfg.Host = k.HostName
		}
	}
	base, host, err := parseHost(cfg.Host)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("%w: timeout %v is negative", ErrInvalidConfig, cfg.Timeout)
	case cfg.MaxResponseBytes < 0:
		return nil, fmt.Errorf("%w: max response bytes %d is negative", ErrInvalidConfig, cfg.MaxResponseBytes)
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	c := &Client{cfg: cfg, base: base, host: host, query: "api-version=" + url.QueryEscape(cfg.APIVersion)}
	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}
		hc.Transport = &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            dialer.DialContext,
			TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:    cfg.Timeout,
			MaxIdleConns:           100,
			MaxIdleConnsPerHost:    100,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			ForceAttemptHTTP2:      true,
		}
	}
	// The credential must never follow a redirect: the service API does not
	// redirect, so any redirect is refused.
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		return fmt.Errorf("%w: to %s://%s", ErrRedirectRefused, req.URL.Scheme, req.URL.Host)
	}
	c.hc = &hc
	return c, nil
}

// parseHost turns Config.Host into the base URL and host[:port].
func parseHost(h string) (base, host string, err error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return "", "", fmt.Errorf("%w: no service host (NAME.azure-devices-provisioning.net)", ErrInvalidConfig)
	}
	raw := h
	if !strings.Contains(h, "://") {
		raw = "https://" + h
	}
	u, perr := url.Parse(raw)
	switch {
	case perr != nil:
		return "", "", fmt.Errorf("%w: service host %q: %v", ErrInvalidConfig, h, perr)
	case u.Scheme != "https":
		return "", "", fmt.Errorf("%w: service host %q: scheme must be https", ErrInvalidConfig, h)
	case u.Hostname() == "":
		return "", "", fmt.Errorf("%w: service host %q: no host name", ErrInvalidConfig, h)
	case u.User != nil:
		return "", "", fmt.Errorf("%w: service host %q: user information is not allowed", ErrInvalidConfig, u.Redacted())
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return "", "", fmt.Errorf("%w: service host %q: want NAME.azure-devices-provisioning.net or https://host[:port], without path or query", ErrInvalidConfig, h)
	}
	return "https://" + u.Host, u.Host, nil
}

// Host returns the host[:port] the client sends to.
func (c *Client) Host() string { return c.host }

// Close closes idle connections of the client's own transport.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// response is what one successful transaction returned.
type response struct {
	status    int
	requestID string
	header    http.Header
}

// call is one request.
type call struct {
	op, id  string
	method  string
	path    string // escaped, starting with "/"
	body    any    // JSON-encoded when non-nil
	ifMatch string
	header  map[string]string
	out     any // decoded from a 2xx body when non-nil
}

// do sends one request and decodes a 2xx body into c.out. Every failure is
// an *Error.
func (c *Client) do(ctx context.Context, k call) (*response, error) {
	reqID := NewRequestID()
	fail := func(cause error) *Error {
		return &Error{Op: k.op, ID: k.id, ClientRequestID: reqID, Err: cause}
	}
	var rd io.Reader
	if k.body != nil {
		b, err := json.Marshal(k.body)
		if err != nil {
			return nil, fail(fmt.Errorf("%w: encode body: %v", ErrInvalidRequest, err))
		}
		rd = bytes.NewReader(b)
	}
	auth, err := c.cfg.Credential.Authorization(ctx)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Op, e.ID, e.ClientRequestID = k.op, k.id, reqID
			return nil, e
		}
		return nil, fail(err)
	}
	rctx, cancel := context.WithTimeoutCause(ctx, c.cfg.Timeout, errRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, k.method, c.base+k.path+"?"+c.query, rd)
	if err != nil {
		return nil, fail(fmt.Errorf("%w: %v", ErrInvalidRequest, err))
	}
	h := req.Header
	h.Set("Accept", "application/json")
	h.Set("User-Agent", c.cfg.UserAgent)
	h.Set(HeaderClientRequestID, reqID)
	h.Set("Authorization", auth)
	if k.body != nil {
		h.Set("Content-Type", "application/json; charset=utf-8")
	}
	if k.ifMatch != "" {
		h.Set("If-Match", k.ifMatch)
	}
	for name, v := range k.header {
		h.Set(name, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fail(c.transportCause(ctx, rctx, err))
	}
	data, readErr := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes+1))
	resp.Body.Close()
	tooLarge := int64(len(data)) > c.cfg.MaxResponseBytes
	if tooLarge {
		data = data[:c.cfg.MaxResponseBytes]
	}
	r := &response{status: resp.StatusCode, requestID: cleanText(resp.Header.Get(HeaderRequestID), maxIDLen), header: resp.Header}
	if !isSuccess(resp.StatusCode) {
		e := fail(nil)
		e.HTTPStatus = resp.StatusCode
		e.RequestID = r.requestID
		e.RetryAfter = parseRetryAfter(resp.Header.Get(HeaderRetryAfter), c.cfg.Now())
		fillErrorDetails(e, resp.Header, data, tooLarge)
		return nil, e
	}
	bad := func(cause error) *Error {
		e := fail(cause)
		e.HTTPStatus, e.RequestID = resp.StatusCode, r.requestID
		return e
	}
	switch {
	case tooLarge:
		return nil, bad(fmt.Errorf("%w: more than %d bytes", ErrResponseTooLarge, c.cfg.MaxResponseBytes))
	case readErr != nil:
		return nil, bad(fmt.Errorf("read response body: %w", c.transportCause(ctx, rctx, readErr)))
	}
	if k.out != nil {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, bad(fmt.Errorf("%w: empty body", ErrMalformedResponse))
		}
		if err := json.Unmarshal(data, k.out); err != nil {
			return nil, bad(fmt.Errorf("%w: %v", ErrMalformedResponse, err))
		}
	}
	return r, nil
}

// transportCause turns a transport error into the cause stored in Error.Err:
// the caller's cancellation as is, the per-request deadline as a
// timeoutError, anything else without the *url.Error wrapper.
func (c *Client) transportCause(ctx, rctx context.Context, err error) error {
	if ctx.Err() != nil {
		if errors.Is(err, ctx.Err()) {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", ctx.Err(), err)
	}
	if errors.Is(context.Cause(rctx), errRequestTimeout) {
		return &timeoutError{after: c.cfg.Timeout}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// errorBody is ErrorDetails decoded leniently: errorCode may come as a
// number or a string.
type errorBody struct {
	ErrorCode  json.RawMessage `json:"errorCode"`
	TrackingID string          `json:"trackingId"`
	Message    string          `json:"message"`
	// Some gateways send {"Message": …, "ExceptionMessage": …}.
	AltMessage string `json:"Message"`
}

// fillErrorDetails sets Code, Message and TrackingID from an error answer.
func fillErrorDetails(e *Error, h http.Header, body []byte, truncated bool) {
	var eb errorBody
	if !truncated && len(body) > 0 && json.Unmarshal(body, &eb) == nil {
		e.Code = parseCode(eb.ErrorCode)
		e.TrackingID = cleanText(eb.TrackingID, maxIDLen)
		msg := eb.Message
		if msg == "" {
			msg = eb.AltMessage
		}
		e.Message = cleanText(msg, maxMessageLen)
	} else if t := bytes.TrimSpace(body); len(t) > 0 {
		line := t
		if i := bytes.IndexAny(t, "\r\n"); i >= 0 {
			line = t[:i]
		}
		e.Message = cleanText(string(line), maxMessageLen)
		if truncated || len(line) < len(t) || len(line) > maxMessageLen {
			e.Message += " [truncated]"
		}
	}
	if e.Code == 0 {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Get(HeaderErrorCode))); err == nil {
			e.Code = n
		}
	}
}

func parseCode(raw json.RawMessage) int {
	n, err := strconv.Atoi(strings.Trim(string(bytes.TrimSpace(raw)), `"`))
	if err != nil {
		return 0
	}
	return n
}

// maxRetryAfter caps a parsed Retry-After.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads delta-seconds or an HTTP-date; invalid or past
// values give 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(maxRetryAfter/time.Second) {
			if err != nil && !errors.Is(err, strconv.ErrRange) {
				return 0
			}
			return maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

// NewRequestID returns a random UUID (version 4), sent as
// x-ms-client-request-id.
func NewRequestID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
