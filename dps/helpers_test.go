package dps_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

const (
	testScope = "0ne00ABCDEF"
	testUA    = "dps-batch/test"
)

// testNow is the fixed wall clock the tests give the client.
var testNow = time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC) // Unix 1700000000

// testPKI is a root with an intermediate, plus a server certificate for
// 127.0.0.1 issued by the root. Built once per test binary.
type testPKI struct {
	root, inter *certs.CA
	other       *certs.CA // an unrelated root, trusted by nobody
	server      tls.Certificate
	roots       *x509.CertPool // trusts root only
}

var (
	pkiOnce sync.Once
	pki     *testPKI
	pkiErr  error
)

// mustPKI returns the shared test PKI.
func mustPKI(tb testing.TB) *testPKI {
	tb.Helper()
	pkiOnce.Do(func() {
		p := &testPKI{}
		if p.root, pkiErr = certs.NewRoot("dps test root", certs.Options{}); pkiErr != nil {
			return
		}
		if p.inter, pkiErr = p.root.NewIntermediate("dps test intermediate", certs.Options{}); pkiErr != nil {
			return
		}
		if p.other, pkiErr = certs.NewRoot("unrelated root", certs.Options{}); pkiErr != nil {
			return
		}
		var srv *certs.Leaf
		if srv, pkiErr = p.root.NewServer([]string{"127.0.0.1", "localhost"}, certs.Options{}); pkiErr != nil {
			return
		}
		p.server = srv.TLSCertificate()
		p.roots = x509.NewCertPool()
		p.roots.AddCert(p.root.Cert)
		pki = p
	})
	if pkiErr != nil {
		tb.Fatalf("test PKI: %v", pkiErr)
	}
	return pki
}

// mustDevice issues a device certificate for id from ca and returns an X.509 device.
func mustDevice(tb testing.TB, ca *certs.CA, id string, opts certs.Options) *dps.Device {
	tb.Helper()
	leaf, err := ca.NewDevice(id, opts)
	if err != nil {
		tb.Fatalf("issue device certificate %s: %v", id, err)
	}
	d := dps.NewX509Device(id, leaf.TLSCertificate())
	tb.Cleanup(d.Close)
	return d
}

// seenRequest is what the fake server recorded about one request.
type seenRequest struct {
	Method     string
	RequestURI string
	Header     http.Header
	Body       string
	PeerCerts  []*x509.Certificate
	Verified   bool // the client chain verified against the server's ClientCAs
	TLSVersion uint16
}

// fakeDPS is a TLS server on loopback that records requests and answers
// with reply. It requires a valid client certificate when one is sent.
type fakeDPS struct {
	*httptest.Server
	reply func(w http.ResponseWriter, r *http.Request)

	mu       sync.Mutex
	requests []seenRequest
	newConns atomic.Int64
	closed   atomic.Int64
}

// serverOpt adjusts the fake server's TLS configuration before it starts.
type serverOpt func(*tls.Config)

// startFake starts a fake DPS answering with reply; it stops at test end.
func startFake(tb testing.TB, reply func(w http.ResponseWriter, r *http.Request), opts ...serverOpt) *fakeDPS {
	tb.Helper()
	p := mustPKI(tb)
	f := &fakeDPS{reply: reply}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.Server.TLS = &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.roots,
	}
	for _, o := range opts {
		o(f.Server.TLS)
	}
	f.Server.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			f.newConns.Add(1)
		case http.StateClosed, http.StateHijacked:
			f.closed.Add(1)
		}
	}
	f.Server.Config.ErrorLog = quietLog()
	f.StartTLS()
	tb.Cleanup(f.Close)
	return f
}

func (f *fakeDPS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	sr := seenRequest{Method: r.Method, RequestURI: r.RequestURI, Header: r.Header.Clone(), Body: string(body)}
	if r.TLS != nil {
		sr.PeerCerts = r.TLS.PeerCertificates
		sr.Verified = len(r.TLS.VerifiedChains) > 0
		sr.TLSVersion = r.TLS.Version
	}
	f.mu.Lock()
	f.requests = append(f.requests, sr)
	f.mu.Unlock()
	f.reply(w, r)
}

// seen returns a copy of the recorded requests.
func (f *fakeDPS) seen() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.requests...)
}

// openConns is the number of server connections not yet closed.
func (f *fakeDPS) openConns() int64 { return f.newConns.Load() - f.closed.Load() }

// mustClient returns a client for f that trusts the test root, with a fixed clock.
func mustClient(tb testing.TB, endpoint string, mod ...func(*dps.Config)) *dps.Client {
	tb.Helper()
	cfg := dps.Config{
		Endpoint:  endpoint,
		IDScope:   testScope,
		RootCAs:   mustPKI(tb).roots,
		UserAgent: testUA,
		Timeout:   10 * time.Second,
		Now:       func() time.Time { return testNow },
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := dps.NewClient(cfg)
	if err != nil {
		tb.Fatalf("NewClient: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// replyJSON writes status, headers and a JSON body the way DPS does.
func replyJSON(w http.ResponseWriter, status int, body string, headers ...string) {
	for i := 0; i+1 < len(headers); i += 2 {
		w.Header().Set(headers[i], headers[i+1])
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// dpsReplies answers register, poll and lookup like DPS for an assigned device.
func dpsReplies(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPut:
		replyJSON(w, http.StatusAccepted, `{"operationId":"4.d0a671905ea5b2c8.e7173b7b","status":"assigning"}`,
			"Retry-After", "3", "x-ms-request-id", "req-register")
	case http.MethodGet:
		replyJSON(w, http.StatusOK, `{"operationId":"4.d0a671905ea5b2c8.e7173b7b","status":"assigned",`+
			`"registrationState":{"registrationId":"dev-001","assignedHub":"hub.azure-devices.net","deviceId":"dev-001",`+
			`"status":"assigned","substatus":"initialAssignment","etag":"IjEi"}}`,
			"x-ms-request-id", "req-poll")
	case http.MethodPost:
		replyJSON(w, http.StatusOK, `{"registrationId":"dev-001","assignedHub":"hub.azure-devices.net","deviceId":"dev-001","status":"assigned"}`,
			"x-ms-request-id", "req-lookup")
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// mustRegister registers d and fails the test on error.
func mustRegister(tb testing.TB, c *dps.Client, d *dps.Device) *dps.Response {
	tb.Helper()
	r, err := c.Register(context.Background(), d, nil)
	if err != nil {
		tb.Fatalf("Register(%s): %v", d, err)
	}
	return r
}

// eventually polls cond until it is true or the deadline passes.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quietLog discards the test server's log (expected handshake failures).
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }
