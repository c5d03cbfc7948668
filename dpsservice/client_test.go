package dpsservice_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dpsservice"
)

// testKey is a policy key for tests (base64 of 32 bytes).
var testKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

// fakeService is a minimal spec-shaped DPS service API for client tests:
// it checks SAS tokens like the service (sr, signature, expiry, policy),
// keeps enrollments in memory and counts creates per id.
type fakeService struct {
	mu          sync.Mutex
	key         []byte
	policy      string
	host        string // the sr the tokens must carry
	enrollments map[string]dpsservice.IndividualEnrollment
	creates     map[string]int
	requests    []*http.Request
	etag        int
	// answer, when set, answers instead of the default handler.
	answer func(w http.ResponseWriter, r *http.Request) bool
}

func newFakeService(t *testing.T) (*fakeService, *httptest.Server) {
	t.Helper()
	f := &fakeService{policy: "provisioningserviceowner", enrollments: map[string]dpsservice.IndividualEnrollment{}, creates: map[string]int{}}
	f.key, _ = base64.StdEncoding.DecodeString(testKey)
	ts := httptest.NewTLSServer(f)
	t.Cleanup(ts.Close)
	u, _ := url.Parse(ts.URL)
	f.host = u.Host
	return f, ts
}

func (f *fakeService) connectionString() string {
	return fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", f.host, f.policy, testKey)
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-ms-error-code", strconv.Itoa(code))
	w.Header().Set("x-ms-request-id", "11111111-2222-4333-8444-555555555555")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(dpsservice.ErrorDetails{ErrorCode: code, TrackingID: "track-1", Message: msg, TimestampUTC: "2026-01-01T00:00:00Z"})
}

func (f *fakeService) checkSAS(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "SharedAccessSignature ")
	if !ok {
		return false
	}
	v, err := url.ParseQuery(rest)
	if err != nil {
		return false
	}
	sr, sig, se, skn := v.Get("sr"), v.Get("sig"), v.Get("se"), v.Get("skn")
	if sr != f.host || skn != f.policy {
		return false
	}
	exp, err := strconv.ParseInt(se, 10, 64)
	if err != nil || time.Unix(exp, 0).Before(time.Now()) {
		return false
	}
	mac := hmac.New(sha256.New, f.key)
	mac.Write([]byte(url.QueryEscape(sr) + "\n" + se))
	return hmac.Equal([]byte(base64.StdEncoding.EncodeToString(mac.Sum(nil))), []byte(sig))
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r)
	if f.answer != nil && f.answer(w, r) {
		return
	}
	if r.URL.Query().Get("api-version") != dpsservice.DefaultAPIVersion {
		writeError(w, 400, 400001, "bad api-version")
		return
	}
	if !f.checkSAS(r) {
		writeError(w, 401, 401002, "Unauthorized")
		return
	}
	path := r.URL.Path
	switch {
	case r.Method == http.MethodPost && path == "/enrollments":
		var op dpsservice.BulkEnrollmentOperation
		if err := json.NewDecoder(r.Body).Decode(&op); err != nil || len(op.Enrollments) > 10 {
			writeError(w, 400, 400004, "bad bulk")
			return
		}
		res := dpsservice.BulkResult{IsSuccessful: true}
		for _, e := range op.Enrollments {
			if _, ok := f.enrollments[e.RegistrationID]; ok && op.Mode == dpsservice.BulkCreate {
				res.IsSuccessful = false
				res.Errors = append(res.Errors, dpsservice.BulkError{RegistrationID: e.RegistrationID, ErrorCode: 409201, ErrorStatus: "Enrollment already exists"})
				continue
			}
			f.etag++
			e.ETag = strconv.Itoa(f.etag)
			f.enrollments[e.RegistrationID] = e
			f.creates[e.RegistrationID]++
		}
		json.NewEncoder(w).Encode(res)
	case r.Method == http.MethodPost && path == "/enrollments/query":
		var ids []string
		for id := range f.enrollments {
			ids = append(ids, id)
		}
		// Deterministic order for paging.
		sortStrings(ids)
		start, _ := strconv.Atoi(r.Header.Get("x-ms-continuation"))
		n, _ := strconv.Atoi(r.Header.Get("x-ms-max-item-count"))
		if n <= 0 {
			n = 100
		}
		end := min(start+n, len(ids))
		var page []dpsservice.IndividualEnrollment
		for _, id := range ids[start:end] {
			page = append(page, f.enrollments[id])
		}
		if end < len(ids) {
			w.Header().Set("x-ms-continuation", strconv.Itoa(end))
		}
		w.Header().Set("x-ms-max-item-count", strconv.Itoa(n))
		w.Header().Set("x-ms-item-type", "Enrollment")
		if page == nil {
			page = []dpsservice.IndividualEnrollment{}
		}
		json.NewEncoder(w).Encode(page)
	case strings.HasPrefix(path, "/enrollments/"):
		id := strings.TrimPrefix(path, "/enrollments/")
		e, ok := f.enrollments[id]
		switch r.Method {
		case http.MethodGet:
			if !ok {
				writeError(w, 404, 404202, "Enrollment not found")
				return
			}
			json.NewEncoder(w).Encode(e)
		case http.MethodDelete:
			if !ok {
				writeError(w, 404, 404202, "Enrollment not found")
				return
			}
			if m := r.Header.Get("If-Match"); m != "" && m != e.ETag {
				writeError(w, 412, 412002, "etag mismatch")
				return
			}
			delete(f.enrollments, id)
			w.WriteHeader(http.StatusNoContent)
		default:
			writeError(w, 405, 405000, "method")
		}
	case strings.HasPrefix(path, "/registrations/") && r.Method == http.MethodDelete:
		writeError(w, 404, 404201, "Registration not found")
	default:
		writeError(w, 404, 404000, "no route")
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func mustClient(t *testing.T, ts *httptest.Server, cs string, mod func(*dpsservice.Config)) *dpsservice.Client {
	t.Helper()
	parsed, err := dpsservice.ParseConnectionString(cs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := dpsservice.Config{Credential: parsed.Credential, HTTPClient: ts.Client()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := dpsservice.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func symEnrollment(id string) dpsservice.IndividualEnrollment {
	return dpsservice.IndividualEnrollment{RegistrationID: id, Attestation: dpsservice.SymmetricKeyAttestationOf(testKey, "")}
}

func TestBulkCreatePerItemErrorsAndGet(t *testing.T) {
	f, ts := newFakeService(t)
	c := mustClient(t, ts, f.connectionString(), nil)
	ctx := context.Background()
	res, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, []dpsservice.IndividualEnrollment{symEnrollment("a"), symEnrollment("b")})
	if err != nil || !res.IsSuccessful {
		t.Fatalf("bulk create = %+v, %v", res, err)
	}
	res, err = c.BulkEnrollments(ctx, dpsservice.BulkCreate, []dpsservice.IndividualEnrollment{symEnrollment("b"), symEnrollment("c")})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].ID() != "b" || res.Errors[0].HTTPStatus() != 409 {
		t.Fatalf("second bulk = %+v, want one 409 error for b", res)
	}
	got, err := c.GetEnrollment(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if cmp, why := dpsservice.CompareAttestation(symEnrollment("b").Attestation, got.Attestation); cmp != dpsservice.Same {
		t.Errorf("compare = %v (%s), want same", cmp, why)
	}
	if f.creates["b"] != 1 {
		t.Errorf("creates of b = %d, want 1", f.creates["b"])
	}
	_, err = c.GetEnrollment(ctx, "nope")
	if !dpsservice.IsNotFound(err) || dpsservice.Classify(err) != dpsservice.Permanent {
		t.Errorf("get missing = %v (class %v), want 404 permanent", err, dpsservice.Classify(err))
	}
}

func TestBulkRefusesMoreThanTen(t *testing.T) {
	f, ts := newFakeService(t)
	c := mustClient(t, ts, f.connectionString(), nil)
	items := make([]dpsservice.IndividualEnrollment, 11)
	for i := range items {
		items[i] = symEnrollment(fmt.Sprintf("d-%d", i))
	}
	_, err := c.BulkEnrollments(context.Background(), dpsservice.BulkCreate, items)
	if !errors.Is(err, dpsservice.ErrInvalidRequest) {
		t.Fatalf("err = %v, want ErrInvalidRequest", err)
	}
	if len(f.requests) != 0 {
		t.Errorf("%d requests sent, want none", len(f.requests))
	}
}

func TestQueryPaging(t *testing.T) {
	f, ts := newFakeService(t)
	c := mustClient(t, ts, f.connectionString(), nil)
	ctx := context.Background()
	for i := 0; i < 25; i += 10 {
		var batch []dpsservice.IndividualEnrollment
		for j := i; j < min(i+10, 25); j++ {
			batch = append(batch, symEnrollment(fmt.Sprintf("d-%02d", j)))
		}
		if _, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, batch); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	cont, pages := "", 0
	for {
		p, err := c.QueryEnrollments(ctx, "", 7, cont)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range p.Items {
			all = append(all, e.RegistrationID)
		}
		if p.Continuation == "" {
			break
		}
		cont = p.Continuation
	}
	if len(all) != 25 || pages != 4 {
		t.Errorf("read %d enrollments in %d pages, want 25 in 4", len(all), pages)
	}
	last := f.requests[len(f.requests)-1]
	if last.Header.Get("x-ms-max-item-count") != "7" || last.Header.Get("x-ms-continuation") != "21" {
		t.Errorf("last query headers: max %q continuation %q", last.Header.Get("x-ms-max-item-count"), last.Header.Get("x-ms-continuation"))
	}
}

func TestSASTokenShape(t *testing.T) {
	key, _ := base64.StdEncoding.DecodeString(testKey)
	tok := dpsservice.SASToken(key, "my-dps.azure-devices-provisioning.net", "provisioningserviceowner", time.Unix(1700000000, 0))
	rest, ok := strings.CutPrefix(tok, "SharedAccessSignature ")
	if !ok {
		t.Fatalf("token %q lacks the prefix", tok)
	}
	v, err := url.ParseQuery(rest)
	if err != nil {
		t.Fatal(err)
	}
	if v.Get("sr") != "my-dps.azure-devices-provisioning.net" || v.Get("se") != "1700000000" || v.Get("skn") != "provisioningserviceowner" {
		t.Errorf("token fields: %v", v)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("my-dps.azure-devices-provisioning.net\n1700000000"))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); v.Get("sig") != want {
		t.Errorf("sig = %q, want %q", v.Get("sig"), want)
	}
	if !strings.HasPrefix(rest, "sr=my-dps.azure-devices-provisioning.net&sig=") {
		t.Errorf("field order: %q", rest)
	}
}

func TestFreshTokenPerRequest(t *testing.T) {
	f, ts := newFakeService(t)
	now := time.Now()
	parsed, err := dpsservice.ParseConnectionString(f.connectionString())
	if err != nil {
		t.Fatal(err)
	}
	parsed.Credential.Now = func() time.Time { return now }
	c, err := dpsservice.NewClient(dpsservice.Config{Credential: parsed.Credential, HTTPClient: ts.Client()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, _ = c.GetEnrollment(ctx, "x")
	now = now.Add(time.Minute)
	_, _ = c.GetEnrollment(ctx, "x")
	a, b := f.requests[0].Header.Get("Authorization"), f.requests[1].Header.Get("Authorization")
	if a == b {
		t.Error("two requests carried the same SAS token; want a fresh one per request")
	}
}

func TestErrorsAreClassifiedAndRedacted(t *testing.T) {
	ctx := context.Background()
	t.Run("wrong key is fatal 401 with hint, no secret in text", func(t *testing.T) {
		f, ts := newFakeService(t)
		other := base64.StdEncoding.EncodeToString([]byte("another key, another key, yes!!!"))
		cs := strings.Replace(f.connectionString(), testKey, other, 1)
		c := mustClient(t, ts, cs, nil)
		_, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, []dpsservice.IndividualEnrollment{symEnrollment("a")})
		if dpsservice.Status(err) != 401 || dpsservice.Classify(err) != dpsservice.Fatal {
			t.Fatalf("err = %v, class %v; want 401 fatal", err, dpsservice.Classify(err))
		}
		if !strings.Contains(dpsservice.Hint(err), "connection string") {
			t.Errorf("hint = %q", dpsservice.Hint(err))
		}
		for _, secret := range []string{other, testKey} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error text %q contains a key", err)
			}
		}
		var e *dpsservice.Error
		if !errors.As(err, &e) || e.Code != 401002 || e.RequestID == "" || e.TrackingID != "track-1" {
			t.Errorf("error details = %+v", e)
		}
	})
	t.Run("expired SAS is refused", func(t *testing.T) {
		f, ts := newFakeService(t)
		c := mustClient(t, ts, f.connectionString(), func(cfg *dpsservice.Config) {
			cfg.Credential.(*dpsservice.SharedAccessKey).Now = func() time.Time { return time.Now().Add(-time.Hour) }
		})
		_, err := c.GetEnrollment(ctx, "a")
		if dpsservice.Classify(err) != dpsservice.Fatal || !strings.Contains(dpsservice.Hint(err), "clock") {
			t.Errorf("err = %v, hint %q", err, dpsservice.Hint(err))
		}
	})
	t.Run("echoed token is redacted", func(t *testing.T) {
		f, ts := newFakeService(t)
		f.answer = func(w http.ResponseWriter, r *http.Request) bool {
			writeError(w, 403, 403001, "policy lacks EnrollmentWrite for "+r.Header.Get("Authorization"))
			return true
		}
		c := mustClient(t, ts, f.connectionString(), nil)
		_, err := c.GetEnrollment(ctx, "a")
		if strings.Contains(err.Error(), "sig=") && !strings.Contains(err.Error(), "sig=[redacted]") || strings.Contains(err.Error(), "&se=") {
			t.Errorf("token leaked: %v", err)
		}
		if dpsservice.Classify(err) != dpsservice.Fatal || !strings.Contains(dpsservice.Hint(err), "EnrollmentWrite") {
			t.Errorf("403: class %v hint %q", dpsservice.Classify(err), dpsservice.Hint(err))
		}
	})
	t.Run("429 is retryable with Retry-After", func(t *testing.T) {
		f, ts := newFakeService(t)
		f.answer = func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Retry-After", "7")
			writeError(w, 429, 429001, "throttled")
			return true
		}
		c := mustClient(t, ts, f.connectionString(), nil)
		_, err := c.GetEnrollment(ctx, "a")
		if dpsservice.Classify(err) != dpsservice.Retryable || dpsservice.RetryAfter(err) != 7*time.Second {
			t.Errorf("err = %v, class %v, retry after %v", err, dpsservice.Classify(err), dpsservice.RetryAfter(err))
		}
		if dpsservice.MayHaveTakenEffect(err) {
			t.Error("a 429 may not have taken effect")
		}
	})
	t.Run("untrusted server is fatal and never sent", func(t *testing.T) {
		f, _ := newFakeService(t)
		parsed, _ := dpsservice.ParseConnectionString(f.connectionString())
		c, err := dpsservice.NewClient(dpsservice.Config{Credential: parsed.Credential}) // system roots
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetEnrollment(ctx, "a")
		if dpsservice.Classify(err) != dpsservice.Fatal || dpsservice.MayHaveTakenEffect(err) || !strings.Contains(dpsservice.Hint(err), "--ca-file") {
			t.Errorf("err = %v class %v hint %q", err, dpsservice.Classify(err), dpsservice.Hint(err))
		}
		if len(f.requests) != 0 {
			t.Error("a request reached the untrusted server")
		}
	})
	t.Run("unknown host is fatal", func(t *testing.T) {
		cred, _ := dpsservice.NewSharedAccessKey("no-such-dps.invalid", "p", testKey)
		c, err := dpsservice.NewClient(dpsservice.Config{Credential: cred, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetEnrollment(ctx, "a")
		if dpsservice.Classify(err) != dpsservice.Fatal || !strings.Contains(dpsservice.Hint(err), "does not resolve") {
			t.Skipf("resolver did not say not-found here: %v (class %v)", err, dpsservice.Classify(err))
		}
	})
	t.Run("not DPS answer", func(t *testing.T) {
		f, ts := newFakeService(t)
		f.answer = func(w http.ResponseWriter, r *http.Request) bool {
			io.WriteString(w, "<html>hello</html>")
			return true
		}
		c := mustClient(t, ts, f.connectionString(), nil)
		_, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, []dpsservice.IndividualEnrollment{symEnrollment("a")})
		if !errors.Is(err, dpsservice.ErrMalformedResponse) || !dpsservice.MayHaveTakenEffect(err) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestConnectionStringNeverShowsKey(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"HostName=x.azure-devices-provisioning.net;SharedAccessKeyName=p;SharedAccessKey=" + testKey, ""},
		{"hostname=x;sharedaccesskeyname=p;sharedaccesskey=" + testKey, ""},
		{"HostName=x;SharedAccessKey=" + testKey, "lacks SharedAccessKeyName"},
		{"HostName=x;SharedAccessKeyName=p;SharedAccessKey=not*base64" + testKey, "not valid base64"},
		{"HostName=x;DeviceId=d;SharedAccessKey=" + testKey, "not a DPS service connection string"},
		{"HostName=x;garbage", "has no '='"},
	} {
		cs, err := dpsservice.ParseConnectionString(tt.in)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v", tt.in, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: err %v, want %q", tt.in, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), testKey) {
			t.Errorf("error %q shows the key", err)
		}
		if cs != nil {
			for _, s := range []string{cs.String(), fmt.Sprintf("%v %+v %#v", cs, cs, cs), fmt.Sprintf("%v %#v", cs.Credential, cs.Credential)} {
				if strings.Contains(s, testKey) {
					t.Errorf("printing shows the key: %s", s)
				}
			}
		}
	}
}

func TestNewClientRefusesPlainHTTP(t *testing.T) {
	cred, _ := dpsservice.NewSharedAccessKey("h", "p", testKey)
	for _, host := range []string{"http://127.0.0.1:8443", "https://h/path", "https://u:p@h"} {
		if _, err := dpsservice.NewClient(dpsservice.Config{Host: host, Credential: cred}); !errors.Is(err, dpsservice.ErrInvalidConfig) {
			t.Errorf("host %q: err %v, want ErrInvalidConfig", host, err)
		}
	}
	c, err := dpsservice.NewClient(dpsservice.Config{Credential: cred})
	if err != nil || c.Host() != "h" {
		t.Errorf("host from credential: %v %v", c, err)
	}
}

func TestBearerCachesToken(t *testing.T) {
	calls := 0
	src := dpsservice.TokenSourceFunc(func(context.Context) (dpsservice.Token, error) {
		calls++
		return dpsservice.Token{Value: fmt.Sprintf("tok-%d", calls), ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	b := dpsservice.NewBearer(src)
	a1, _ := b.Authorization(context.Background())
	a2, _ := b.Authorization(context.Background())
	if a1 != "Bearer tok-1" || a2 != a1 || calls != 1 {
		t.Errorf("got %q %q after %d calls", a1, a2, calls)
	}
	failing := dpsservice.NewBearer(dpsservice.TokenSourceFunc(func(context.Context) (dpsservice.Token, error) {
		return dpsservice.Token{}, errors.New("az login needed; Bearer eyJsecret")
	}))
	_, err := failing.Authorization(context.Background())
	if dpsservice.Classify(err) != dpsservice.Fatal || strings.Contains(err.Error(), "eyJsecret") {
		t.Errorf("err = %v", err)
	}
}

func TestRedactionInPrintedAttestation(t *testing.T) {
	e := symEnrollment("a")
	for _, s := range []string{fmt.Sprintf("%v", *e.Attestation.SymmetricKey), fmt.Sprintf("%+v", *e.Attestation.SymmetricKey), fmt.Sprintf("%#v", *e.Attestation.SymmetricKey)} {
		if strings.Contains(s, testKey) {
			t.Errorf("printed %q", s)
		}
	}
}
