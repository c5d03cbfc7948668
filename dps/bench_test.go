package dps_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// BenchmarkRegisterPoll measures one register + one poll over loopback TLS
// on a kept-alive connection. allocs/op include the in-process test
// server; the "net/http baseline" case sends the same two requests with a
// bare http.Client, so the difference is this package's own cost.
func BenchmarkRegisterPoll(b *testing.B) {
	p := mustPKI(b)
	f := startFake(b, dpsReplies)
	c := mustClient(b, f.URL)
	ctx := context.Background()
	devices := map[string]*dps.Device{
		"sas":  dps.NewSymmetricKeyDevice("dev-001", []byte("secret-device-key-0123456789abcdef")),
		"x509": mustDevice(b, p.inter, "dev-001", certs.Options{}),
	}
	for _, name := range []string{"sas", "x509"} {
		d := devices[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := c.Register(ctx, d, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.OperationStatus(ctx, d, r.Operation.OperationID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("net/http baseline", func(b *testing.B) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots}}}
		defer hc.CloseIdleConnections()
		body := []byte(`{"registrationId":"dev-001"}`)
		do := func(method, url string, body []byte) {
			req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		b.ReportAllocs()
		for b.Loop() {
			do(http.MethodPut, f.URL+"/0ne00ABCDEF/registrations/dev-001/register?api-version=2021-10-01", body)
			do(http.MethodGet, f.URL+"/0ne00ABCDEF/registrations/dev-001/operations/4.d0a671905ea5b2c8.e7173b7b?api-version=2021-10-01", nil)
		}
	})
}
