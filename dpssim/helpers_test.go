package dpssim

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

const testScope = "0ne00ABCDEF"

// testPKI is the certificate hierarchy the tests share:
//
//	root ── intermediate ── devices (dev-*)
//	root ── devices issued directly by the root (rdev-*)
//	otherRoot ── otherInter ── stranger devices
type testPKI struct {
	root, inter           *certs.CA
	otherRoot, otherInter *certs.CA
}

var pki = sync.OnceValue(func() *testPKI {
	must := func(ca *certs.CA, err error) *certs.CA {
		if err != nil {
			panic(err)
		}
		return ca
	}
	p := &testPKI{}
	p.root = must(certs.NewRoot("dpssim test root", certs.Options{}))
	p.inter = must(p.root.NewIntermediate("dpssim test intermediate", certs.Options{}))
	p.otherRoot = must(certs.NewRoot("some other root", certs.Options{}))
	p.otherInter = must(p.otherRoot.NewIntermediate("some other intermediate", certs.Options{}))
	return p
})

// mustDevice issues a device certificate for id from ca.
func mustDevice(tb testing.TB, ca *certs.CA, id string) *certs.Leaf {
	tb.Helper()
	leaf, err := ca.NewDevice(id, certs.Options{})
	if err != nil {
		tb.Fatalf("issue device %s: %v", id, err)
	}
	return leaf
}

func leafPEM(l *certs.Leaf) string { return string(certs.CertPEM(l.Cert)) }

func caPEM(ca *certs.CA) string { return string(certs.CertPEM(ca.Cert)) }

// leafOnly drops the chain: the device presents its own certificate alone.
func leafOnly(l *certs.Leaf) *certs.Leaf { return &certs.Leaf{Cert: l.Cert, Key: l.Key} }

// Symmetric keys used by the tests (32 random-looking bytes, base64).
var (
	keyA     = bytes.Repeat([]byte{0xa1}, 32)
	keyB     = bytes.Repeat([]byte{0xb2}, 32)
	groupKey = bytes.Repeat([]byte{0xc3}, 64)
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// fakeClock is a settable clock for Server.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// mustStart serves sim over TLS on loopback until the test ends.
func mustStart(tb testing.TB, sim *Server) *Running {
	tb.Helper()
	run, err := StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("StartTLS: %v", err)
	}
	tb.Cleanup(func() { _ = run.Close() })
	return run
}

// mustNew builds a server from cfg or fails the test.
func mustNew(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	sim, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return sim
}

// rawDevice talks to the simulator with plain net/http: the wire format
// tests use it so they do not depend on the dps client.
type rawDevice struct {
	tb     testing.TB
	base   string
	scope  string
	id     string
	client *http.Client
	// key signs a SAS token per request when set.
	key []byte
	// apiVersion defaults to 2021-10-01.
	apiVersion string
}

func newRawDevice(tb testing.TB, run *Running, id string, cert *certs.Leaf, key []byte) *rawDevice {
	var cfg *tls.Config
	if cert != nil {
		cfg = run.ClientTLSConfig(cert.TLSCertificate())
	} else {
		cfg = run.ClientTLSConfig()
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	tb.Cleanup(tr.CloseIdleConnections)
	return &rawDevice{tb: tb, base: run.URL, scope: testScope, id: id, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, key: key}
}

type rawResp struct {
	status int
	header http.Header
	body   []byte
}

func (r rawResp) op(tb testing.TB) dps.RegistrationOperationStatus {
	tb.Helper()
	var v dps.RegistrationOperationStatus
	if err := json.Unmarshal(r.body, &v); err != nil {
		tb.Fatalf("decode operation status %q: %v", r.body, err)
	}
	return v
}

func (r rawResp) errBody(tb testing.TB) dps.ErrorBody {
	tb.Helper()
	var v dps.ErrorBody
	if err := json.Unmarshal(r.body, &v); err != nil {
		tb.Fatalf("decode error body %q: %v", r.body, err)
	}
	return v
}

func (d *rawDevice) do(method, path string, body string, hdr map[string]string) rawResp {
	d.tb.Helper()
	resp, err := d.try(method, path, body, hdr)
	if err != nil {
		d.tb.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

func (d *rawDevice) try(method, path string, body string, hdr map[string]string) (rawResp, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, d.base+path, rd)
	if err != nil {
		return rawResp{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if d.key != nil {
		req.Header.Set("Authorization", dps.SASToken(d.key, d.scope, d.id, time.Now().Add(time.Hour)))
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rawResp{}, err
	}
	return rawResp{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func (d *rawDevice) version() string {
	if d.apiVersion != "" {
		return d.apiVersion
	}
	return dps.DefaultAPIVersion
}

func (d *rawDevice) registerPath() string {
	return "/" + d.scope + "/registrations/" + d.id + "/register?api-version=" + d.version()
}

func (d *rawDevice) register(payload string) rawResp {
	d.tb.Helper()
	body := `{"registrationId":"` + d.id + `"`
	if payload != "" {
		body += `,"payload":` + payload
	}
	return d.do(http.MethodPut, d.registerPath(), body+"}", nil)
}

func (d *rawDevice) poll(opID string) rawResp {
	d.tb.Helper()
	return d.do(http.MethodGet, "/"+d.scope+"/registrations/"+d.id+"/operations/"+opID+"?api-version="+d.version(), "", nil)
}

func (d *rawDevice) lookup() rawResp {
	d.tb.Helper()
	return d.do(http.MethodPost, "/"+d.scope+"/registrations/"+d.id+"?api-version="+d.version(), `{"registrationId":"`+d.id+`"}`, nil)
}

// registerAndWait registers and polls until the operation is final,
// returning the final poll answer.
func (d *rawDevice) registerAndWait() rawResp {
	d.tb.Helper()
	r := d.register("")
	if r.status != http.StatusAccepted {
		d.tb.Fatalf("register %s: status %d, body %s", d.id, r.status, r.body)
	}
	opID := r.op(d.tb).OperationID
	for range 20 {
		p := d.poll(opID)
		if p.status != http.StatusAccepted {
			return p
		}
	}
	d.tb.Fatalf("register %s: still assigning after 20 polls", d.id)
	return rawResp{}
}

// jsonHas reports whether the JSON object body has field == value.
func jsonHas(body []byte, field, value string) bool {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return false
	}
	return m[field] == value
}

// jsonEqual compares two JSON texts semantically.
func jsonEqual(tb testing.TB, a []byte, b string) bool {
	tb.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		tb.Fatalf("bad JSON in test: %v", err)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}
