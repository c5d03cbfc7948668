package dps_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// errCase describes the *dps.Error a failing request must produce.
type errCase struct {
	status     int
	code       int
	class      dps.Class
	retryAfter time.Duration
	requestID  string
	is         error  // errors.Is target, if any
	msg        string // substring of Error()
	hint       string // substring of Hint(); "" means no hint expected
}

// checkErr asserts err against want.
func checkErr(t *testing.T, err error, want errCase) {
	t.Helper()
	var e *dps.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want *dps.Error", err, err)
	}
	if e.HTTPStatus != want.status || e.Code != want.code {
		t.Errorf("HTTPStatus, Code: got %d, %d, want %d, %d (%v)", e.HTTPStatus, e.Code, want.status, want.code, err)
	}
	if got := dps.Classify(err); got != want.class {
		t.Errorf("Classify: got %v, want %v (%v)", got, want.class, err)
	}
	if got := dps.RetryAfter(err); got != want.retryAfter {
		t.Errorf("RetryAfter: got %v, want %v", got, want.retryAfter)
	}
	if e.RequestID != want.requestID {
		t.Errorf("RequestID: got %q, want %q", e.RequestID, want.requestID)
	}
	if want.is != nil && !errors.Is(err, want.is) {
		t.Errorf("errors.Is(%v, %v) = false", err, want.is)
	}
	if e.HTTPStatus == 0 && e.Err == nil {
		t.Errorf("transport error without Err: %#v", e)
	}
	if e.Op == "" || e.RegistrationID == "" || !strings.Contains(err.Error(), e.Op+" device "+e.RegistrationID+":") {
		t.Errorf("error %q does not name op and device (op %q, id %q)", err, e.Op, e.RegistrationID)
	}
	if !strings.Contains(err.Error(), want.msg) {
		t.Errorf("Error():\n got %s\nwant it to contain %q", err, want.msg)
	}
	hint := dps.Hint(err)
	if (want.hint == "") != (hint == "") || !strings.Contains(hint, want.hint) {
		t.Errorf("Hint: got %q, want %q", hint, want.hint)
	}
}

// TestHTTPErrors checks the typed error and class for error responses.
func TestHTTPErrors(t *testing.T) {
	retryDate := testNow.Add(30 * time.Second).Format(http.TimeFormat)
	huge := strings.Repeat("x", 10<<20)
	tests := []struct {
		name    string
		status  int
		body    string
		headers []string
		want    errCase
	}{
		{
			name: "401 with DPS error body", status: 401,
			body:    `{"errorCode":401002,"trackingId":"trk-1","message":"Invalid certificate.","timestampUtc":"2019-03-15T19:43:02.79Z"}`,
			headers: []string{"x-ms-request-id", "trk-1", "x-ms-error-code", "401002"},
			want: errCase{status: 401, code: 401002, class: dps.Permanent, requestID: "trk-1",
				msg: "register device dev-001: HTTP 401 Unauthorized: DPS error 401002: Invalid certificate. (request id trk-1)", hint: "device key"},
		},
		{
			name: "404 not found", status: 404,
			body: `{"errorCode":404201,"trackingId":"trk-2","message":"Registration not found."}`,
			want: errCase{status: 404, code: 404201, class: dps.Permanent, msg: "(tracking id trk-2)", hint: "enrollment"},
		},
		{
			name: "429 with Retry-After seconds", status: 429,
			body:    `{"errorCode":429001,"trackingId":"t","message":"Operations are being throttled"}`,
			headers: []string{"Retry-After", "7", "x-ms-request-id", "r-429"},
			want:    errCase{status: 429, code: 429001, class: dps.Retryable, retryAfter: 7 * time.Second, requestID: "r-429", msg: "retry after 7s", hint: "throttling"},
		},
		{
			name: "503 with Retry-After date", status: 503, headers: []string{"Retry-After", retryDate},
			want: errCase{status: 503, class: dps.Retryable, retryAfter: 30 * time.Second, msg: "HTTP 503 Service Unavailable", hint: "server error"},
		},
		{
			name: "500", status: 500, body: `{"errorCode":500000,"message":"Internal server error"}`,
			want: errCase{status: 500, code: 500000, class: dps.Retryable, msg: "Internal server error", hint: "server error"},
		},
		{name: "501 is permanent", status: 501, want: errCase{status: 501, class: dps.Permanent, msg: "HTTP 501"}},
		{name: "408", status: 408, want: errCase{status: 408, class: dps.Retryable, msg: "HTTP 408"}},
		{
			name: "409203 concurrent registration", status: 409, body: `{"errorCode":409203,"message":"Precondition failed."}`,
			want: errCase{status: 409, code: 409203, class: dps.Retryable, msg: "Precondition failed.", hint: "another client"},
		},
		{name: "other 409", status: 409, body: `{"errorCode":409000}`, want: errCase{status: 409, code: 409000, class: dps.Permanent, msg: "DPS error 409000"}},
		{name: "400", status: 400, body: `{"errorCode":400000,"message":"bad"}`, want: errCase{status: 400, code: 400000, class: dps.Permanent, msg: "bad"}},
		{
			name: "code as string and only in header", status: 401, body: `{"errorCode":"401002"}`,
			want: errCase{status: 401, code: 401002, class: dps.Permanent, msg: "DPS error 401002", hint: "device key"},
		},
		{
			name: "code from header", status: 403, body: `<html>forbidden</html>`, headers: []string{"x-ms-error-code", "403000"},
			want: errCase{status: 403, code: 403000, class: dps.Permanent, msg: "<html>forbidden</html>"},
		},
		{
			name: "non-JSON body keeps its first line", status: 502, body: "Bad gateway from proxy\nline two\n",
			want: errCase{status: 502, class: dps.Retryable, msg: "HTTP 502 Bad Gateway: Bad gateway from proxy", hint: "server error"},
		},
		{
			name: "10 MB error body is cut", status: 500, body: huge,
			want: errCase{status: 500, class: dps.Retryable, msg: "xxx… [truncated]", hint: "server error"},
		},
		{
			name: "echoed SAS token is redacted", status: 401,
			body: `{"errorCode":401002,"message":"bad token SharedAccessSignature sr=a&sig=c2VjcmV0%3D&se=1&skn=registration, also sig=c2VjcmV0"}`,
			want: errCase{status: 401, code: 401002, class: dps.Permanent, msg: "bad token SharedAccessSignature [redacted], also sig=[redacted]", hint: "device key"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				replyJSON(w, tt.status, tt.body, tt.headers...)
			})
			c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.MaxResponseBytes = 64 << 10 })
			d := dps.NewSymmetricKeyDevice("dev-001", []byte("secret-device-key"))
			_, err := c.Register(context.Background(), d, nil)
			checkErr(t, err, tt.want)
			if strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("error leaks a signature: %v", err)
			}
		})
	}
}

// TestX509RejectedHint checks the 401002 hint for a certificate device.
func TestX509RejectedHint(t *testing.T) {
	f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, 401, `{"errorCode":401002,"trackingId":"t","message":"Signing certificate info did not match chain elements"}`)
	})
	c := mustClient(t, f.URL)
	d := mustDevice(t, mustPKI(t).inter, "dev-001", certs.Options{})
	_, err := c.Register(context.Background(), d, nil)
	checkErr(t, err, errCase{status: 401, code: 401002, class: dps.Permanent, msg: "did not match chain elements",
		hint: "certificate chain not accepted: present the full chain up to a verified CA; CN must equal the registration id"})
}

// TestBadBodies checks 2xx responses whose body cannot be used.
func TestBadBodies(t *testing.T) {
	tests := []struct {
		name  string
		reply func(w http.ResponseWriter, r *http.Request)
		want  errCase
	}{
		{
			name:  "malformed JSON",
			reply: func(w http.ResponseWriter, r *http.Request) { replyJSON(w, 202, `{"operationId":"x","status":`) },
			want:  errCase{status: 202, class: dps.Retryable, is: dps.ErrMalformedResponse, msg: "malformed response body"},
		},
		{
			name: "body cut short",
			reply: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(202)
				io.WriteString(w, `{"operationId":`)
			},
			want: errCase{status: 202, class: dps.Retryable, is: io.ErrUnexpectedEOF, msg: "read response body"},
		},
		{
			name: "10 MB body",
			reply: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(202)
				chunk := []byte(strings.Repeat(" ", 64<<10))
				for i := 0; i < 160; i++ {
					if _, err := w.Write(chunk); err != nil {
						return // the client hung up after its limit, as it should
					}
				}
			},
			want: errCase{status: 202, class: dps.Permanent, is: dps.ErrResponseTooLarge,
				msg: "HTTP 202: response body too large: more than 1048576 bytes", hint: "large response"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.reply)
			c := mustClient(t, f.URL)
			_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
			checkErr(t, err, tt.want)
		})
	}
}

// TestTransportErrors checks failures below HTTP: resets, TLS trust,
// client certificates rejected in the handshake, non-TLS servers, timeouts.
func TestTransportErrors(t *testing.T) {
	p := mustPKI(t)
	resetConn := func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		// Close the TCP socket under TLS with SO_LINGER 0: an RST, no close_notify.
		tcp := conn.(*tls.Conn).NetConn().(*net.TCPConn)
		tcp.SetLinger(0)
		tcp.Close()
	}
	t.Run("connection reset", func(t *testing.T) {
		f := startFake(t, resetConn)
		c := mustClient(t, f.URL)
		_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
		checkErr(t, err, errCase{class: dps.Retryable, is: syscall.ECONNRESET, msg: "connection reset"})
	})
	t.Run("server certificate not trusted", func(t *testing.T) {
		f := startFake(t, dpsReplies)
		c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.RootCAs = x509.NewCertPool() })
		_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
		checkErr(t, err, errCase{class: dps.Fatal, msg: "certificate signed by unknown authority", hint: "--ca-file"})
		if got := len(f.seen()); got != 0 {
			t.Errorf("server saw %d requests, want 0", got)
		}
	})
	t.Run("server certificate for another name", func(t *testing.T) {
		leaf, err := p.root.NewServer([]string{"dps.example"}, certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		f := startFake(t, dpsReplies, func(c *tls.Config) { c.Certificates = []tls.Certificate{leaf.TLSCertificate()} })
		c := mustClient(t, f.URL)
		_, err = c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
		checkErr(t, err, errCase{class: dps.Fatal, msg: "cannot validate certificate for 127.0.0.1", hint: "not trusted"})
	})
	// X.509 devices verify the server with the client's remembering
	// verifier: same errors, and the device certificate is never sent to a
	// server that fails verification.
	t.Run("X.509 device: untrusted server never sees the device certificate", func(t *testing.T) {
		wrongName, err := p.root.NewServer([]string{"dps.example"}, certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			server []tls.Certificate // nil: the usual server certificate
			roots  *x509.CertPool
			msg    string
		}{
			{name: "unknown authority", roots: x509.NewCertPool(), msg: "certificate signed by unknown authority"},
			{name: "another name", server: []tls.Certificate{wrongName.TLSCertificate()}, roots: p.roots, msg: "cannot validate certificate for 127.0.0.1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var clientCerts atomic.Int64
				f := startFake(t, dpsReplies, func(c *tls.Config) {
					if tc.server != nil {
						c.Certificates = tc.server
					}
					c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
						if len(raw) > 0 {
							clientCerts.Add(1)
						}
						return nil
					}
				})
				c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.RootCAs = tc.roots })
				d := mustDevice(t, p.inter, "dev-001", certs.Options{})
				for range 2 { // the second attempt must not pass on anything remembered
					_, err := c.Register(context.Background(), d, nil)
					checkErr(t, err, errCase{class: dps.Fatal, msg: tc.msg, hint: "--ca-file"})
				}
				if got := len(f.seen()); got != 0 {
					t.Errorf("server saw %d requests, want 0", got)
				}
				if got := clientCerts.Load(); got != 0 {
					t.Errorf("server received the device certificate %d times, want 0", got)
				}
			})
		}
	})
	t.Run("X.509 devices speak TLS 1.2 even to a TLS 1.3 server", func(t *testing.T) {
		f := startFake(t, dpsReplies, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS13 })
		c := mustClient(t, f.URL)
		mustRegister(t, c, mustDevice(t, p.inter, "dev-001", certs.Options{}))
		mustRegister(t, c, dps.NewSymmetricKeyDevice("dev-002", []byte("k")))
		var got []string
		for _, r := range f.seen() {
			got = append(got, tls.VersionName(r.TLSVersion))
		}
		if want := []string{"TLS 1.2", "TLS 1.3"}; !slices.Equal(got, want) {
			t.Fatalf("TLS versions seen: %v, want %v (X.509 device, then symmetric-key device)", got, want)
		}
	})
	t.Run("X.509 devices may offer TLS 1.3", func(t *testing.T) {
		f := startFake(t, dpsReplies, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS13 })
		c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.X509MaxTLSVersion = tls.VersionTLS13 })
		mustRegister(t, c, mustDevice(t, p.inter, "dev-001", certs.Options{}))
		if seen := f.seen(); len(seen) != 1 || seen[0].TLSVersion != tls.VersionTLS13 {
			t.Fatalf("%d requests; want one over TLS 1.3", len(seen))
		}
	})
	t.Run("not a TLS server", func(t *testing.T) {
		plain := httptest.NewServer(http.HandlerFunc(dpsReplies))
		t.Cleanup(plain.Close)
		c := mustClient(t, strings.Replace(plain.URL, "http://", "https://", 1))
		_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
		checkErr(t, err, errCase{class: dps.Fatal, msg: "server gave HTTP response", hint: "does not speak TLS"})
	})
	for _, maxVer := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(fmt.Sprintf("device certificate rejected %s", tls.VersionName(maxVer)), func(t *testing.T) {
			f := startFake(t, dpsReplies, func(c *tls.Config) {
				c.MaxVersion = maxVer
				c.ClientAuth = tls.RequireAndVerifyClientCert
			})
			c := mustClient(t, f.URL)
			d := mustDevice(t, p.other, "dev-001", certs.Options{}) // issued by a CA the server does not trust
			_, err := c.Register(context.Background(), d, nil)
			checkErr(t, err, errCase{class: dps.Permanent, msg: "remote error: tls: ", hint: "rejected the device certificate"})
		})
	}
	t.Run("per-request timeout", func(t *testing.T) {
		// Hold the handler until the test ends: returning when the client
		// hangs up could race an empty 200 against the close.
		release := make(chan struct{})
		f := startFake(t, func(w http.ResponseWriter, r *http.Request) { <-release })
		defer close(release)
		c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.Timeout = 200 * time.Millisecond })
		start := time.Now()
		_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil)
		checkErr(t, err, errCase{class: dps.Retryable, is: context.DeadlineExceeded, msg: "request timed out after 200ms", hint: "timed out"})
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("timeout took %v, want about 200ms", el)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		release := make(chan struct{})
		f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
			cancel()
			<-release
		})
		defer close(release)
		c := mustClient(t, f.URL)
		_, err := c.OperationStatus(ctx, dps.NewSymmetricKeyDevice("dev-001", []byte("k")), "op")
		checkErr(t, err, errCase{class: dps.Retryable, is: context.Canceled, msg: "poll device dev-001: context canceled"})
	})
	t.Run("invalid payload is not sent", func(t *testing.T) {
		f := startFake(t, dpsReplies)
		c := mustClient(t, f.URL)
		for _, payload := range []string{`[1]`, `"s"`, `{"a":`, `12`} {
			_, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), []byte(payload))
			checkErr(t, err, errCase{class: dps.Permanent, is: dps.ErrInvalidRequest, msg: "payload must be a JSON object"})
		}
		if got := len(f.seen()); got != 0 {
			t.Errorf("server saw %d requests, want 0", got)
		}
	})
	t.Run("device without credential", func(t *testing.T) {
		c := mustClient(t, "https://127.0.0.1:1")
		for _, d := range []*dps.Device{
			{RegistrationID: "dev-001"},
			dps.NewX509Device("dev-001", tls.Certificate{}),
			dps.NewSymmetricKeyDevice("dev-001", nil),
		} {
			_, err := c.RegistrationStatus(context.Background(), d)
			checkErr(t, err, errCase{class: dps.Permanent, is: dps.ErrInvalidRequest, msg: "lookup device dev-001: invalid request"})
		}
	})
}

// TestRedirects checks that only same-host redirects that keep the method
// are followed, and that credentials never reach another host.
func TestRedirects(t *testing.T) {
	other := startFake(t, dpsReplies)
	key := []byte("secret-device-key")
	tests := []struct {
		name      string
		device    func(t *testing.T) *dps.Device
		location  func(self string) string
		code      int
		wantErr   string // "" means the redirect is followed
		wantClass dps.Class
	}{
		{
			name: "same host 307 is followed", code: 307,
			device:   func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", key) },
			location: func(self string) string { return "/moved" + "?api-version=2021-10-01" },
		},
		{
			name: "other host refused (SAS)", code: 307, wantErr: "redirect refused: to another host", wantClass: dps.Fatal,
			device:   func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", key) },
			location: func(string) string { return other.URL + "/steal" },
		},
		{
			name: "other host refused (X.509)", code: 308, wantErr: "redirect refused: to another host", wantClass: dps.Fatal,
			device:   func(t *testing.T) *dps.Device { return mustDevice(t, mustPKI(t).root, "dev-001", certs.Options{}) },
			location: func(string) string { return strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/steal" },
		},
		{
			name: "method change refused", code: 302, wantErr: "would change PUT to GET", wantClass: dps.Fatal,
			device:   func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", key) },
			location: func(string) string { return "/moved" },
		},
		{
			name: "plain http refused", code: 307, wantErr: "to another host (http://", wantClass: dps.Fatal,
			device:   func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", key) },
			location: func(self string) string { return strings.Replace(self, "https://", "http://", 1) + "/x" },
		},
		{
			name: "redirect loop refused", code: 307, wantErr: "more than 3 redirects", wantClass: dps.Fatal,
			device:   func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", key) },
			location: func(string) string { return "/loop" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var self string
			f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/moved") && tt.wantErr == "" {
					dpsReplies(w, r)
					return
				}
				w.Header().Set("Location", tt.location(self))
				w.WriteHeader(tt.code)
			})
			self = f.URL
			c := mustClient(t, f.URL)
			before := len(other.seen())
			_, err := c.Register(context.Background(), tt.device(t), nil)
			if len(other.seen()) != before {
				t.Fatalf("the other host received a request")
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want the redirect followed", err)
				}
				seen := f.seen()
				if len(seen) != 2 || seen[1].Method != "PUT" || seen[1].Body != seen[0].Body || seen[1].Header.Get("Authorization") == "" {
					t.Errorf("redirected request: got %+v", seen)
				}
				return
			}
			checkErr(t, err, errCase{class: tt.wantClass, is: dps.ErrRedirectRefused, msg: tt.wantErr, hint: "redirects"})
		})
	}
}

// TestClassify covers causes that cannot be produced on loopback.
func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want dps.Class
		hint string
	}{
		{"nil", nil, 0, ""},
		{"canceled", context.Canceled, dps.Retryable, ""},
		{"wrapped deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), dps.Retryable, ""},
		{"host not found", &net.DNSError{Err: "no such host", Name: "dps.invalid", IsNotFound: true}, dps.Fatal, "does not resolve"},
		{"dns timeout", &net.DNSError{Err: "timeout", Name: "x", IsTimeout: true}, dps.Retryable, ""},
		{"connection refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, dps.Retryable, ""},
		{"unknown authority", x509.UnknownAuthorityError{}, dps.Fatal, "not trusted"},
		{"hostname mismatch", x509.HostnameError{Host: "x"}, dps.Fatal, "not trusted"},
		{"server certificate expired", x509.CertificateInvalidError{Reason: x509.Expired}, dps.Fatal, "not trusted"},
		{"alert bad certificate", tls.AlertError(42), dps.Permanent, "device certificate"},
		{"alert certificate required", tls.AlertError(116), dps.Permanent, "device certificate"},
		{"alert protocol version", tls.AlertError(70), dps.Fatal, ""},
		{"alert internal error", tls.AlertError(80), dps.Retryable, ""},
		{"invalid config", fmt.Errorf("wrap: %w", dps.ErrInvalidConfig), dps.Fatal, ""},
		{"hand-made 429", &dps.Error{HTTPStatus: 429, RetryAfter: time.Second}, dps.Retryable, "throttling"},
		{"hand-made 409203", &dps.Error{HTTPStatus: 409, Code: 409203}, dps.Retryable, "another client"},
		{"hand-made 404201", fmt.Errorf("device d-1: %w", &dps.Error{HTTPStatus: 404, Code: 404201}), dps.Permanent, "enrollment"},
		{"hand-made 401002 defaults to the X.509 hint", &dps.Error{HTTPStatus: 401, Code: 401002}, dps.Permanent, "full chain"},
		{"hand-made transport error", &dps.Error{Err: io.ErrUnexpectedEOF}, dps.Retryable, ""},
		{"unknown error", errors.New("boom"), dps.Retryable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dps.Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v): got %v, want %v", tt.err, got, tt.want)
			}
			if got := dps.Hint(tt.err); (tt.hint == "") != (got == "") || !strings.Contains(got, tt.hint) {
				t.Errorf("Hint(%v): got %q, want %q", tt.err, got, tt.hint)
			}
		})
	}
}

// TestHintForStatus checks hints for final failed/disabled registrations.
func TestHintForStatus(t *testing.T) {
	tests := []struct {
		status dps.Status
		code   int
		want   string
	}{
		{dps.StatusDisabled, 0, "the enrollment is disabled in DPS: enable it, then re-run with --retry-failed"},
		{dps.StatusFailed, 400208, "allocate an IoT hub"},
		{dps.StatusFailed, 400207, "custom allocation"},
		{dps.StatusFailed, 400209, "approval"},
		{dps.StatusFailed, 404201, "enrollment"},
		{dps.StatusFailed, 123456, ""},
		{dps.StatusAssigned, 0, ""},
		{dps.StatusAssigning, 0, ""},
	}
	for _, tt := range tests {
		got := dps.HintForStatus(tt.status, tt.code)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("HintForStatus(%s, %d): got %q, want %q", tt.status, tt.code, got, tt.want)
		}
	}
}

// TestClassString checks the names used in reports.
func TestClassString(t *testing.T) {
	for c, want := range map[dps.Class]string{0: "none", dps.Retryable: "retryable", dps.Permanent: "permanent", dps.Fatal: "fatal", 9: "Class(9)"} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String(): got %q, want %q", int(c), got, want)
		}
	}
}

// TestNoSecretsInErrors checks that a rejected SAS request's error, hint
// and device text contain neither the key nor the signature sent.
func TestNoSecretsInErrors(t *testing.T) {
	f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, 401, `{"errorCode":401002,"message":"Unauthorized"}`)
	})
	c := mustClient(t, f.URL)
	key := []byte("super-secret-device-key-material!")
	d := dps.NewSymmetricKeyDevice("dev-001", key)
	_, err := c.Register(context.Background(), d, nil)
	if err == nil {
		t.Fatal("got nil error, want 401")
	}
	auth := f.seen()[0].Header.Get("Authorization")
	sig := auth[strings.Index(auth, "sig=")+4 : strings.Index(auth, "&se=")]
	text := err.Error() + dps.Hint(err) + fmt.Sprintf("%v %+v %#v", err, err, d)
	for _, secret := range []string{string(key), base64.StdEncoding.EncodeToString(key), sig, auth} {
		if strings.Contains(text, secret) {
			t.Errorf("error text leaks %q: %s", secret, text)
		}
	}
}
