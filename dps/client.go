package dps

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// proxyFunc picks the proxy of every transport: the environment's
// (HTTPS_PROXY, NO_PROXY), read once per process.
var proxyFunc = http.ProxyFromEnvironment

// Defaults for the zero values of Config fields.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultUserAgent        = "dps-batch/dev"
	DefaultSASTTL           = 10 * time.Minute
	DefaultMaxResponseBytes = 1 << 20
	DefaultMaxIdleConns     = 100
)

const (
	// maxRedirects bounds same-host redirects; DPS itself does not redirect.
	maxRedirects = 3
	// deviceIdleTimeout closes an X.509 device's idle connection even if
	// Device.Close is never called. Polls come every few seconds.
	deviceIdleTimeout = 30 * time.Second
	// sharedIdleTimeout is the idle timeout of the symmetric-key pool.
	sharedIdleTimeout = 90 * time.Second
	// maxResponseHeaderBytes bounds the headers read from any response. DPS
	// sends well under 2 KB; net/http's default (10 MB) would let a broken
	// endpoint cost 10 MB per request in flight.
	maxResponseHeaderBytes = 64 << 10
	// maxIDLen bounds a server-supplied request or tracking id. It is
	// stored with every attempt and printed in errors, so it is cleaned like
	// any server text (a broken proxy could echo the SAS token in it).
	maxIDLen = 100
)

// Config configures a Client. The zero value of each optional field selects
// the documented default.
type Config struct {
	// Endpoint is the DPS device endpoint, "https://host[:port]" with no path
	// or query. "" means DefaultEndpoint. Only https is accepted.
	Endpoint string
	// IDScope is the DPS instance's ID scope (e.g. "0ne00000000"); required.
	IDScope string
	// APIVersion is the api-version query value; "" means DefaultAPIVersion.
	// "2019-03-31" is what most device SDKs send.
	APIVersion string
	// RootCAs verifies the server certificate; nil means the system roots.
	// Use SystemPoolWithCAFile to add a CA bundle (such as the simulator's).
	RootCAs *x509.CertPool
	// Timeout bounds one HTTP transaction, body read included; 0 means 30s.
	Timeout time.Duration
	// UserAgent is the User-Agent header; "" means "dps-batch/dev".
	UserAgent string
	// SASTTL is the lifetime of each SAS token (a fresh one signs every
	// request); 0 means 10 minutes, which tolerates modest clock skew.
	SASTTL time.Duration
	// Now is the wall clock for SAS expiry and Retry-After dates; nil means time.Now.
	Now func() time.Time
	// MaxResponseBytes bounds the body read from any response; 0 means 1 MiB.
	MaxResponseBytes int64
	// MaxIdleConns is how many idle keep-alive connections the shared
	// symmetric-key pool keeps; set it to at least the number of concurrent
	// workers. 0 means 100. (X.509 devices keep one each.)
	MaxIdleConns int
	// X509MaxTLSVersion is the highest TLS version X.509 devices offer: 0
	// means TLS 1.2, the only version DPS supports today. With
	// tls.VersionTLS13, a server that speaks 1.3 receives the device
	// certificate encrypted (under 1.2 it travels in the clear), at the
	// cost of 1.3 key shares in every handshake. Symmetric-key devices
	// always let crypto/tls negotiate.
	X509MaxTLSVersion uint16
}

// Client talks to one DPS instance (endpoint + ID scope). It is safe for
// concurrent use. Symmetric-key devices share one connection pool; each
// X.509 device has its own (see Device).
type Client struct {
	cfg     Config
	base    string // "https://host[:port]"
	host    string // host[:port], for the redirect check
	scopeP  string // escaped ID scope path segment
	query   string // "?api-version=…"
	timeout time.Duration

	sasTransport *http.Transport
	sasHTTP      *http.Client
	// verifier checks the server for X.509 devices' connections; nil
	// leaves it to crypto/tls.
	verifier *serverVerifier
}

// NewClient validates cfg, fills in defaults and returns a Client. Errors
// match ErrInvalidConfig.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%w: endpoint %q: %v", ErrInvalidConfig, cfg.Endpoint, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("%w: endpoint %q: scheme must be https", ErrInvalidConfig, cfg.Endpoint)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: endpoint %q: no host", ErrInvalidConfig, cfg.Endpoint)
	case u.User != nil:
		return nil, fmt.Errorf("%w: endpoint %q: user information is not allowed", ErrInvalidConfig, u.Redacted())
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return nil, fmt.Errorf("%w: endpoint %q: must be https://host[:port] without path, query or fragment", ErrInvalidConfig, cfg.Endpoint)
	}
	if cfg.IDScope == "" || strings.TrimSpace(cfg.IDScope) != cfg.IDScope {
		return nil, fmt.Errorf("%w: ID scope %q: must be non-empty, without surrounding spaces", ErrInvalidConfig, cfg.IDScope)
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	switch {
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("%w: timeout %v is negative", ErrInvalidConfig, cfg.Timeout)
	case cfg.SASTTL < 0:
		return nil, fmt.Errorf("%w: SAS TTL %v is negative", ErrInvalidConfig, cfg.SASTTL)
	case cfg.MaxResponseBytes < 0:
		return nil, fmt.Errorf("%w: max response bytes %d is negative", ErrInvalidConfig, cfg.MaxResponseBytes)
	case cfg.MaxIdleConns < 0:
		return nil, fmt.Errorf("%w: max idle connections %d is negative", ErrInvalidConfig, cfg.MaxIdleConns)
	case cfg.X509MaxTLSVersion != 0 && cfg.X509MaxTLSVersion != tls.VersionTLS12 && cfg.X509MaxTLSVersion != tls.VersionTLS13:
		return nil, fmt.Errorf("%w: X.509 TLS version 0x%04x: want TLS 1.2 or 1.3", ErrInvalidConfig, cfg.X509MaxTLSVersion)
	}
	if cfg.X509MaxTLSVersion == 0 {
		cfg.X509MaxTLSVersion = tls.VersionTLS12
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	if cfg.SASTTL == 0 {
		cfg.SASTTL = DefaultSASTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.MaxIdleConns == 0 {
		cfg.MaxIdleConns = DefaultMaxIdleConns
	}
	c := &Client{
		cfg:     cfg,
		base:    "https://" + u.Host,
		host:    u.Host,
		scopeP:  url.PathEscape(cfg.IDScope),
		query:   "?api-version=" + url.QueryEscape(cfg.APIVersion),
		timeout: cfg.Timeout,
		// The wall clock, as crypto/tls uses, not cfg.Now.
		verifier: newServerVerifier(u, proxyFunc, cfg.RootCAs, time.Now),
	}
	tlsConf := c.tlsConfig()
	// Symmetric-key requests carry no TLS identity, so resuming sessions
	// across devices is safe and saves handshakes.
	tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	c.sasTransport = c.newTransport(tlsConf)
	c.sasTransport.MaxIdleConns = cfg.MaxIdleConns
	c.sasTransport.MaxIdleConnsPerHost = cfg.MaxIdleConns
	c.sasTransport.IdleConnTimeout = sharedIdleTimeout
	c.sasHTTP = c.newHTTPClient(c.sasTransport)
	return c, nil
}

// Close closes the idle connections of the shared symmetric-key pool.
// X.509 devices own their connections; close them with Device.Close.
func (c *Client) Close() {
	c.sasTransport.CloseIdleConnections()
}

// tlsConfig returns a new TLS configuration that verifies the server
// against Config.RootCAs. There is deliberately no way to skip verification.
func (c *Client) tlsConfig() *tls.Config {
	return &tls.Config{
		RootCAs:    c.cfg.RootCAs,
		MinVersion: tls.VersionTLS12,
	}
}

// newTransport returns an HTTP/1.1 transport using tlsConf. DPS devices
// speak HTTP/1.1, and TLS renegotiation (for client certificates) is not
// possible over HTTP/2.
func (c *Client) newTransport(tlsConf *tls.Config) *http.Transport {
	dialer := &net.Dialer{Timeout: c.timeout, KeepAlive: 30 * time.Second}
	var protos http.Protocols
	protos.SetHTTP1(true)
	return &http.Transport{
		Proxy:                  proxyFunc,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    c.timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		Protocols:              &protos,
	}
}

// newHTTPClient wraps tr with the redirect policy: at most maxRedirects,
// same scheme and host only, same method. Credentials therefore never reach
// another host: not the SAS token, not the client certificate.
func (c *Client) newHTTPClient(tr *http.Transport) *http.Client {
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			first := via[0]
			switch {
			case len(via) > maxRedirects:
				return fmt.Errorf("%w: more than %d redirects", ErrRedirectRefused, maxRedirects)
			case req.URL.Scheme != "https" || !strings.EqualFold(req.URL.Host, c.host):
				return fmt.Errorf("%w: to another host (%s://%s)", ErrRedirectRefused, req.URL.Scheme, req.URL.Host)
			case req.Method != first.Method:
				return fmt.Errorf("%w: it would change %s to %s", ErrRedirectRefused, first.Method, req.Method)
			}
			return nil
		},
	}
}

// Response is what one successful transaction returned.
type Response struct {
	HTTPStatus      int           // 200 or 202 (any 2xx is accepted)
	RequestID       string        // x-ms-request-id response header
	ClientRequestID string        // the x-ms-client-request-id this client sent
	RetryAfter      time.Duration // Retry-After response header; 0 if absent
	// Operation is the body of Register and OperationStatus. For
	// OperationStatus, Operation.OperationID is always the id asked for.
	Operation *RegistrationOperationStatus
	// ReportedOperationID is set when a poll response named a different
	// operationId than the one asked for; the asked one is kept.
	ReportedOperationID string
	// Registration is the body of RegistrationStatus.
	Registration *DeviceRegistrationResult
	// Latency is the time from sending the request to reading the whole body.
	Latency time.Duration
}

// Register starts a registration: PUT /{idScope}/registrations/{id}/register
// with body {"registrationId": id, "payload": payload}. payload is optional
// (nil or "null" omit it) and must be a JSON object. A successful response
// (usually 202, status "assigning") carries the operation id to poll.
func (c *Client) Register(ctx context.Context, d *Device, payload json.RawMessage) (*Response, error) {
	return c.RegisterWithCSR(ctx, d, payload, nil)
}

// RegisterWithCSR is Register with the device's certificate signing request
// (DER PKCS#10, subject CN = the registration id) in the body, so that DPS
// issues the device a certificate: the final operation result's
// registrationState.issuedCertificateChain holds it, leaf first. It needs
// api-version CertificateIssuanceAPIVersion (Config.APIVersion); other
// versions do not know the field, so the request is refused here. A nil csr
// is Register.
func (c *Client) RegisterWithCSR(ctx context.Context, d *Device, payload json.RawMessage, csr []byte) (*Response, error) {
	const op = "register"
	if csr != nil && c.cfg.APIVersion != CertificateIssuanceAPIVersion {
		return nil, c.failure(op, d, "", fmt.Errorf("%w: a CSR needs api-version %s, not %s", ErrInvalidRequest, CertificateIssuanceAPIVersion, c.cfg.APIVersion))
	}
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 || string(payload) == "null" {
		payload = nil
	} else if payload[0] != '{' || !json.Valid(payload) {
		return nil, c.failure(op, d, "", fmt.Errorf("%w: payload must be a JSON object", ErrInvalidRequest))
	}
	if err := c.checkDevice(op, d); err != nil {
		return nil, err
	}
	reg := DeviceRegistration{RegistrationID: d.RegistrationID, Payload: payload}
	if csr != nil {
		reg.CSR = base64.StdEncoding.EncodeToString(csr)
	}
	body, err := json.Marshal(reg)
	if err != nil {
		return nil, c.failure(op, d, "", fmt.Errorf("%w: encode body: %v", ErrInvalidRequest, err))
	}
	return c.roundTrip(ctx, d, op, http.MethodPut, c.devicePath(d)+"/register", body, func(r *Response, data []byte) error {
		st, err := decodeOperation(data)
		if err != nil {
			return err
		}
		if st.OperationID == "" {
			return fmt.Errorf("%w: register response has no operationId", ErrProtocol)
		}
		r.Operation = st
		return nil
	})
}

// OperationStatus polls a registration operation:
// GET /{idScope}/registrations/{id}/operations/{operationID}. A 202 means
// still in progress (see Response.RetryAfter); a 200 carries the final state.
func (c *Client) OperationStatus(ctx context.Context, d *Device, operationID string) (*Response, error) {
	const op = "poll"
	if err := c.checkDevice(op, d); err != nil {
		return nil, err
	}
	if operationID == "" {
		return nil, c.failure(op, d, "", fmt.Errorf("%w: operation id is empty", ErrInvalidRequest))
	}
	path := c.devicePath(d) + "/operations/" + url.PathEscape(operationID)
	return c.roundTrip(ctx, d, op, http.MethodGet, path, nil, func(r *Response, data []byte) error {
		st, err := decodeOperation(data)
		if err != nil {
			return err
		}
		// DPS may omit the id on polls; a different id is reported, not followed.
		if st.OperationID != operationID {
			if st.OperationID != "" {
				r.ReportedOperationID = st.OperationID
			}
			st.OperationID = operationID
		}
		r.Operation = st
		return nil
	})
}

// RegistrationStatus looks up the device's current registration without
// registering it again (not billable): POST /{idScope}/registrations/{id}
// with body {"registrationId": id}.
func (c *Client) RegistrationStatus(ctx context.Context, d *Device) (*Response, error) {
	const op = "lookup"
	if err := c.checkDevice(op, d); err != nil {
		return nil, err
	}
	body, err := json.Marshal(DeviceRegistration{RegistrationID: d.RegistrationID})
	if err != nil {
		return nil, c.failure(op, d, "", fmt.Errorf("%w: encode body: %v", ErrInvalidRequest, err))
	}
	return c.roundTrip(ctx, d, op, http.MethodPost, c.devicePath(d), body, func(r *Response, data []byte) error {
		var res DeviceRegistrationResult
		if err := json.Unmarshal(data, &res); err != nil {
			return fmt.Errorf("%w: %v", ErrMalformedResponse, err)
		}
		if res.Status == "" {
			return fmt.Errorf("%w: registration status response has no status", ErrProtocol)
		}
		res.clean()
		r.Registration = &res
		return nil
	})
}

// decodeOperation parses a register or poll body, which must have a status.
func decodeOperation(data []byte) (*RegistrationOperationStatus, error) {
	var st RegistrationOperationStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	if st.Status == "" {
		return nil, fmt.Errorf("%w: response has no status", ErrProtocol)
	}
	if err := checkOperationID(st.OperationID); err != nil {
		return nil, err
	}
	st.Status = Status(cleanText(string(st.Status), maxShortLen))
	st.RegistrationState.clean()
	return &st, nil
}

func (c *Client) devicePath(d *Device) string {
	return "/" + c.scopeP + "/registrations/" + url.PathEscape(d.RegistrationID)
}

// checkDevice rejects requests that cannot be sent for d.
func (c *Client) checkDevice(op string, d *Device) error {
	switch {
	case d == nil:
		return &Error{Op: op, Err: fmt.Errorf("%w: nil device", ErrInvalidRequest)}
	case d.RegistrationID == "":
		return c.failure(op, d, "", fmt.Errorf("%w: registration id is empty", ErrInvalidRequest))
	case d.kind() == credNone:
		return c.failure(op, d, "", fmt.Errorf("%w: device has no credential (use NewX509Device or NewSymmetricKeyDevice)", ErrInvalidRequest))
	case d.kind() == credSAS && len(d.s.key) == 0:
		return c.failure(op, d, "", fmt.Errorf("%w: symmetric key is empty", ErrInvalidRequest))
	}
	return nil
}

// failure wraps a cause (no HTTP response) in an *Error.
func (c *Client) failure(op string, d *Device, clientReqID string, cause error) *Error {
	e := &Error{Op: op, ClientRequestID: clientReqID, Err: cause}
	if d != nil {
		e.RegistrationID = d.RegistrationID
		e.cred = d.kind()
	}
	return e
}

// badBody reports a 2xx response whose body could not be used.
func (c *Client) badBody(op string, d *Device, r *Response, cause error) *Error {
	e := c.failure(op, d, r.ClientRequestID, cause)
	e.HTTPStatus = r.HTTPStatus
	e.RequestID = r.RequestID
	e.RetryAfter = r.RetryAfter
	return e
}

// bufPool recycles response read buffers; decoding copies what it keeps.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuffer keeps unusually large buffers out of the pool.
const maxPooledBuffer = 64 << 10

// roundTrip sends one request for d, reads the (bounded) body and, for a
// 2xx response, calls decode to fill in the Response from the body (which
// is only valid during the call). A decode error is reported as a bad body;
// any failure is an *Error.
func (c *Client) roundTrip(ctx context.Context, d *Device, op, method, path string, body []byte,
	decode func(r *Response, data []byte) error) (*Response, error) {
	reqID := NewRequestID()
	var hc *http.Client
	if d.kind() == credX509 {
		var err error
		if hc, err = d.x509Client(c); err != nil {
			return nil, c.failure(op, d, reqID, err)
		}
	} else {
		hc = c.sasHTTP
	}

	rctx, cancel := context.WithTimeoutCause(ctx, c.timeout, errRequestTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, c.base+path+c.query, rd)
	if err != nil {
		return nil, c.failure(op, d, reqID, fmt.Errorf("%w: %v", ErrInvalidRequest, err))
	}
	h := req.Header
	h["Accept"] = []string{"application/json"}
	h["User-Agent"] = []string{c.cfg.UserAgent}
	h["X-Ms-Client-Request-Id"] = []string{reqID}
	if body != nil {
		h["Content-Type"] = []string{"application/json; charset=utf-8"}
	}
	if d.kind() == credSAS {
		// A fresh token per request, so a retry after a long back-off is never
		// sent with an expired one.
		h["Authorization"] = []string{SASToken(d.s.key, c.cfg.IDScope, d.RegistrationID, c.cfg.Now().Add(c.cfg.SASTTL))}
	}

	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.failure(op, d, reqID, c.transportCause(ctx, rctx, err))
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			bufPool.Put(buf)
		}
	}()
	_, readErr := buf.ReadFrom(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes+1))
	// Closing before EOF (oversized body) drops the connection instead of
	// reading the rest; that is the point of the bound.
	resp.Body.Close()
	tooLarge := int64(buf.Len()) > c.cfg.MaxResponseBytes
	if tooLarge {
		buf.Truncate(int(c.cfg.MaxResponseBytes))
	}

	r := &Response{
		HTTPStatus:      resp.StatusCode,
		RequestID:       cleanText(resp.Header.Get(HeaderRequestID), maxIDLen),
		ClientRequestID: reqID,
		RetryAfter:      parseRetryAfter(resp.Header.Get(HeaderRetryAfter), c.cfg.Now()),
		Latency:         time.Since(start),
	}
	if !isSuccess(resp.StatusCode) {
		// The status decides; a cut-short error body only loses detail.
		e := c.failure(op, d, reqID, nil)
		e.HTTPStatus = resp.StatusCode
		e.RequestID = r.RequestID
		e.RetryAfter = r.RetryAfter
		fillErrorDetails(e, resp.Header, buf.Bytes(), tooLarge)
		return nil, e
	}
	switch {
	case tooLarge:
		return nil, c.badBody(op, d, r, fmt.Errorf("%w: more than %d bytes", ErrResponseTooLarge, c.cfg.MaxResponseBytes))
	case readErr != nil:
		return nil, c.badBody(op, d, r, fmt.Errorf("read response body: %w", c.transportCause(ctx, rctx, readErr)))
	}
	if err := decode(r, buf.Bytes()); err != nil {
		return nil, c.badBody(op, d, r, err)
	}
	return r, nil
}

// transportCause turns a transport error into the cause stored in Error.Err:
// the caller's cancellation as is, the per-request deadline as a
// timeoutError, anything else without the *url.Error wrapper (whose text
// repeats the URL).
func (c *Client) transportCause(ctx, rctx context.Context, err error) error {
	if ctx.Err() != nil {
		if errors.Is(err, ctx.Err()) {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", ctx.Err(), err)
	}
	if errors.Is(context.Cause(rctx), errRequestTimeout) {
		return &timeoutError{after: c.timeout}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// NewRequestID returns a random UUID (version 4), the form DPS uses for
// request and tracking ids; the client sends one as x-ms-client-request-id.
func NewRequestID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails (Go 1.24+)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
