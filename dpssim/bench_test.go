package dpssim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// benchServer has no quotas, so throughput is the simulator's own.
func benchServer(b *testing.B, cfg Config) *Server {
	cfg.IDScope = testScope
	cfg.Quotas = Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1}
	return mustNew(b, cfg)
}

// BenchmarkHandlerRegisterPoll measures the handler alone (no network, no
// TLS): one register PUT and one poll per iteration, symmetric-key group
// devices, run in parallel.
func BenchmarkHandlerRegisterPoll(b *testing.B) {
	sim := benchServer(b, symConfig())
	expiry := time.Now().Add(time.Hour)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("bench-%d", n.Add(1))
			auth := dps.SASToken(dps.DeriveDeviceKeyBytes(groupKey, id), testScope, id, expiry)
			req := httptest.NewRequest("PUT", "/"+testScope+"/registrations/"+id+"/register?api-version=2021-10-01", strings.NewReader(`{"registrationId":"`+id+`"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", auth)
			w := httptest.NewRecorder()
			sim.ServeHTTP(w, req)
			if w.Code != http.StatusAccepted {
				b.Fatalf("register: %d %s", w.Code, w.Body)
			}
			var op dps.RegistrationOperationStatus
			_ = json.Unmarshal(w.Body.Bytes(), &op)
			req = httptest.NewRequest("GET", "/"+testScope+"/registrations/"+id+"/operations/"+op.OperationID+"?api-version=2021-10-01", nil)
			req.Header.Set("Authorization", auth)
			w = httptest.NewRecorder()
			sim.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatalf("poll: %d %s", w.Code, w.Body)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

// BenchmarkLoopbackSAS measures register + poll over HTTPS on loopback with
// symmetric-key devices sharing kept-alive connections, 32 at a time.
func BenchmarkLoopbackSAS(b *testing.B) {
	sim := benchServer(b, symConfig())
	run := mustStart(b, sim)
	tr := &http.Transport{TLSClientConfig: run.ClientTLSConfig(), MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	expiry := time.Now().Add(time.Hour)
	var n atomic.Int64
	b.SetParallelism(16) // 16 × GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("lb-%d", n.Add(1))
			auth := dps.SASToken(dps.DeriveDeviceKeyBytes(groupKey, id), testScope, id, expiry)
			registerAndPoll(b, client, run.URL, id, auth)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

// BenchmarkLoopbackX509 is the X.509 group case: every device opens its own
// TLS connection (a full handshake with a client certificate chain), then
// registers and polls on it.
func BenchmarkLoopbackX509(b *testing.B) {
	p := pki()
	sim := benchServer(b, Config{
		Certificates: []CACertificate{{Name: "inter", PEM: caPEM(p.inter), Verified: true}},
		Groups:       []EnrollmentGroup{{EnrollmentGroupID: "fleet", Attestation: Attestation{X509: &X509Attestation{CACertificate: "inter"}}}},
	})
	run := mustStart(b, sim)
	devices := make([]*certs.Leaf, 64)
	for i := range devices {
		devices[i] = mustDevice(b, p.inter, fmt.Sprintf("x-%02d", i))
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(n.Add(1)) % len(devices)
			tr := &http.Transport{TLSClientConfig: run.ClientTLSConfig(devices[i].TLSCertificate())}
			registerAndPoll(b, &http.Client{Transport: tr}, run.URL, devices[i].Cert.Subject.CommonName, "")
			tr.CloseIdleConnections()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

func registerAndPoll(b *testing.B, client *http.Client, base, id, auth string) {
	do := func(method, path, body string) (int, []byte) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}
	code, body := do("PUT", "/"+testScope+"/registrations/"+id+"/register?api-version=2021-10-01", `{"registrationId":"`+id+`"}`)
	if code != http.StatusAccepted {
		// Two goroutines may share an X.509 device id; a 409 is fine there.
		if code == http.StatusConflict {
			return
		}
		b.Fatalf("register %s: %d %s", id, code, body)
	}
	var op dps.RegistrationOperationStatus
	_ = json.Unmarshal(body, &op)
	if code, body := do("GET", "/"+testScope+"/registrations/"+id+"/operations/"+op.OperationID+"?api-version=2021-10-01", ""); code != http.StatusOK {
		b.Fatalf("poll %s: %d %s", id, code, body)
	}
}
