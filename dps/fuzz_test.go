package dps

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
)

// fuzzSecret stands for a SAS signature a hostile server tries to make the
// client repeat; it must never come back in an error or a response field.
const fuzzSecret = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg"

// FuzzParseRetryAfter: any header value gives a delay in [0, 24h].
func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)
	for _, s := range []string{"", "3", "-1", "36000", "1e9", "99999999999999999999", " 7 ", "Tue, 14 Nov 2023 22:13:30 GMT", "Mon, 01 Jan 9999 00:00:00 GMT", "0x10", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := parseRetryAfter(v, now)
		if got < 0 || got > maxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %v, want within [0, %v]", v, got, maxRetryAfter)
		}
	})
}

// FuzzDecodeOperation: a register or poll body either decodes with a status
// or is refused as malformed or as a protocol violation; it never panics.
func FuzzDecodeOperation(f *testing.F) {
	for _, s := range []string{
		`{"operationId":"4.x","status":"assigning"}`,
		`{"operationId":"4.x","status":"assigned","registrationState":{"registrationId":"d","assignedHub":"h","deviceId":"d","status":"assigned","payload":{"a":[1,2]}}}`,
		`{"operationId":"4.x","sta`, `{"status":""}`, `[]`, `null`, `{"operationId":7,"status":true}`,
		`{"status":"assigning","registrationState":null}`, `{"status":"x","registrationState":{"errorCode":"400207"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeOperation(data)
		switch {
		case err == nil && (st == nil || st.Status == ""):
			t.Fatalf("decoded %q without a status: %+v", data, st)
		case err != nil && !errors.Is(err, ErrMalformedResponse) && !errors.Is(err, ErrProtocol):
			t.Fatalf("decode %q: %v, want ErrMalformedResponse or ErrProtocol", data, err)
		case err != nil && Classify(err) == 0:
			t.Fatalf("decode %q: unclassified error %v", data, err)
		}
	})
}

// FuzzErrorDetails: whatever an error response carries, the details kept
// are bounded, single-line, and never repeat a SAS signature.
func FuzzErrorDetails(f *testing.F) {
	for _, s := range []string{
		`{"errorCode":401002,"trackingId":"t","message":"Unauthorized"}`,
		`{"errorCode":"429001","message":"SharedAccessSignature sr=x&sig=`,
		"<html>\r\n<body>sig=", `{"message":"\u0073ig=`, "",
	} {
		f.Add([]byte(s), []byte(`"}`), "401002", false)
	}
	f.Fuzz(func(t *testing.T, prefix, suffix []byte, codeHeader string, truncated bool) {
		body := append(append(append([]byte{}, prefix...), "sig="+fuzzSecret...), suffix...)
		e := &Error{}
		h := http.Header{}
		h.Set(HeaderErrorCode, codeHeader)
		fillErrorDetails(e, h, body, truncated)
		for name, v := range map[string]string{"message": e.Message, "tracking id": e.TrackingID} {
			if strings.Contains(v, fuzzSecret) {
				t.Fatalf("%s %q repeats the signature", name, v)
			}
			if strings.IndexFunc(v, unicode.IsControl) >= 0 {
				t.Fatalf("%s %q has control characters", name, v)
			}
		}
		if len(e.Message) > maxMessageLen+len("…")+len(" [truncated]") || len(e.TrackingID) > 100+len("…") {
			t.Fatalf("details too long: message %d bytes, tracking id %d bytes", len(e.Message), len(e.TrackingID))
		}
	})
}

// fuzzReply is what the fuzzing server answers with.
type fuzzReply struct {
	status     int
	retryAfter string
	requestID  string
	body       []byte
}

// FuzzClientResponse runs real requests (TLS on loopback) against a server
// answering with fuzzed status, headers and body. The server may also echo
// the request's Authorization header ("$AUTH") anywhere in its answer, as a
// broken proxy might. Every call must end with a usable Response or a
// classified *Error naming the operation and device, on one line, without
// the SAS signature, and with bounded fields.
func FuzzClientResponse(f *testing.F) {
	var (
		mu       sync.Mutex
		reply    fuzzReply
		lastAuth string // the Authorization header of the last request
	)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		rep := reply
		mu.Unlock()
		auth := r.Header.Get("Authorization")
		mu.Lock()
		lastAuth = auth
		mu.Unlock()
		echo := func(s string) string { return strings.ReplaceAll(s, "$AUTH", auth) }
		if rep.retryAfter != "" {
			w.Header().Set(HeaderRetryAfter, echo(rep.retryAfter))
		}
		if rep.requestID != "" {
			w.Header().Set(HeaderRequestID, echo(rep.requestID))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rep.status)
		_, _ = w.Write([]byte(echo(string(rep.body))))
	}))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.StartTLS()
	f.Cleanup(ts.Close)
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	c, err := NewClient(Config{Endpoint: ts.URL, IDScope: "0ne00000000", RootCAs: roots, Timeout: 5 * time.Second, MaxResponseBytes: 4096})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.Close)
	// A key whose SAS signature the test can recognise in any output.
	d := NewSymmetricKeyDevice("dev-1", []byte("fuzz-device-key-0123456789abcdef"))

	f.Add(uint16(202), "3", "5b1c", []byte(`{"operationId":"4.x","status":"assigning"}`), uint8(0))
	f.Add(uint16(200), "", "", []byte(`{"operationId":"4.x","status":"assigned","registrationState":{"registrationId":"dev-1","status":"assigned"}}`), uint8(1))
	f.Add(uint16(200), "", "", []byte(`{"registrationId":"dev-1","status":"assigning"}`), uint8(2))
	f.Add(uint16(401), "", "$AUTH", []byte(`{"errorCode":401002,"trackingId":"$AUTH","message":"bad token $AUTH"}`), uint8(0))
	f.Add(uint16(503), "36000", "", []byte("<html>$AUTH\n</html>"), uint8(1))
	f.Add(uint16(202), "-1", "", []byte(`{"operationId":"","status":"assigning"}`), uint8(0))
	f.Add(uint16(429), "Mon, 01 Jan 9999 00:00:00 GMT", "$AUTH$AUTH", []byte(strings.Repeat("x", 5000)), uint8(2))
	f.Fuzz(func(t *testing.T, status uint16, retryAfter, requestID string, body []byte, op uint8) {
		st := 200 + int(status)%400 // 200..599: the statuses a server may answer a device with
		mu.Lock()
		reply = fuzzReply{status: st, retryAfter: retryAfter, requestID: requestID, body: body}
		lastAuth = ""
		mu.Unlock()
		sig := func() string {
			mu.Lock()
			defer mu.Unlock()
			_, after, _ := strings.Cut(lastAuth, "sig=")
			v, _, _ := strings.Cut(after, "&")
			return v
		}

		var resp *Response
		var err error
		kind := []string{"register", "poll", "lookup"}[op%3]
		switch kind {
		case "register":
			resp, err = c.Register(context.Background(), d, nil)
		case "poll":
			resp, err = c.OperationStatus(context.Background(), d, "4.op")
		case "lookup":
			resp, err = c.RegistrationStatus(context.Background(), d)
		}
		if err == nil {
			switch {
			case resp.HTTPStatus < 200 || resp.HTTPStatus > 299:
				t.Fatalf("HTTP %d accepted as success", resp.HTTPStatus)
			case kind == "register" && (resp.Operation == nil || resp.Operation.OperationID == "" || resp.Operation.Status == ""):
				t.Fatalf("register response without operation id or status: %+v", resp.Operation)
			case kind == "poll" && (resp.Operation == nil || resp.Operation.OperationID != "4.op"):
				t.Fatalf("poll response does not keep the asked operation id: %+v", resp.Operation)
			case kind == "lookup" && (resp.Registration == nil || resp.Registration.Status == ""):
				t.Fatalf("lookup response without status: %+v", resp.Registration)
			}
			checkFuzzText(t, "request id", resp.RequestID, sig(), 200)
			if resp.RetryAfter < 0 || resp.RetryAfter > maxRetryAfter {
				t.Fatalf("RetryAfter %v out of [0, %v]", resp.RetryAfter, maxRetryAfter)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("got %T %v, want *Error", err, err)
		}
		if e.Op != kind || e.RegistrationID != "dev-1" || Classify(err) == 0 {
			t.Fatalf("error %v: op %q device %q class %v", err, e.Op, e.RegistrationID, Classify(err))
		}
		if e.RetryAfter < 0 || e.RetryAfter > maxRetryAfter {
			t.Fatalf("RetryAfter %v out of [0, %v]", e.RetryAfter, maxRetryAfter)
		}
		checkFuzzText(t, "error", err.Error(), sig(), 4096)
		checkFuzzText(t, "request id", e.RequestID, sig(), 200)
		checkFuzzText(t, "hint", Hint(err), sig(), 400)
	})
}

// checkFuzzText fails when s is longer than max, spans lines, or carries
// the request's SAS signature (as sent, URL-encoded, or decoded).
func checkFuzzText(t *testing.T, what, s, sig string, max int) {
	t.Helper()
	if len(s) > max {
		t.Fatalf("%s is %d bytes, want at most %d", what, len(s), max)
	}
	if strings.ContainsAny(s, "\r\n") {
		t.Fatalf("%s %q spans lines", what, s)
	}
	if sig == "" {
		return
	}
	dec, _ := url.QueryUnescape(sig)
	for _, v := range []string{sig, dec} {
		if len(v) >= 16 && strings.Contains(s, v) {
			t.Fatalf("%s %q carries the SAS signature", what, s)
		}
	}
}
