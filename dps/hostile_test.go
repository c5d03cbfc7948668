package dps_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// countingWriter counts what a hostile handler managed to write before the
// client hung up.
type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// flood writes total bytes of filler to w, stopping when the client hangs up.
func flood(w io.Writer, total int64, filler byte) {
	chunk := []byte(strings.Repeat(string(filler), 64<<10))
	for sent := int64(0); sent < total; sent += int64(len(chunk)) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}

// hugeHeader is a response header of about n bytes, in 4 KB values.
func hugeHeader(h http.Header, n int) {
	v := strings.Repeat("x", 4<<10)
	for i := 0; i < n/len(v); i++ {
		h.Add(fmt.Sprintf("X-Filler-%d", i), v)
	}
}

// TestHostileServers points the client at servers that misbehave in ways
// that cost memory or time: a 50 MB answer, 50 MB of headers, a body that
// trickles, a listener that never completes the TLS handshake. Each request
// must end with a typed, classified error, within the per-request timeout,
// having read (and allocated) a bounded amount whatever the server sends.
func TestHostileServers(t *testing.T) {
	const timeout = 700 * time.Millisecond
	const fiftyMB = 50 << 20
	tests := []struct {
		name  string
		reply func(w http.ResponseWriter, r *http.Request, sent *countingWriter)
		want  errCase
	}{
		{
			name: "50 MB answer to a register",
			reply: func(w http.ResponseWriter, r *http.Request, cw *countingWriter) {
				w.Header().Set("Content-Length", fmt.Sprint(fiftyMB))
				w.WriteHeader(http.StatusAccepted)
				flood(cw, fiftyMB, ' ')
			},
			want: errCase{status: 202, class: dps.Permanent, is: dps.ErrResponseTooLarge, msg: "more than 1048576 bytes", hint: "large response"},
		},
		{
			name: "50 MB error page",
			reply: func(w http.ResponseWriter, r *http.Request, cw *countingWriter) {
				w.WriteHeader(http.StatusBadGateway)
				io.WriteString(cw, "<html>bad gateway")
				flood(cw, fiftyMB, '<')
			},
			want: errCase{status: 502, class: dps.Retryable, msg: "HTTP 502 Bad Gateway: <html>bad gateway", hint: "server error"},
		},
		{
			name: "50 MB of response headers",
			reply: func(w http.ResponseWriter, r *http.Request, cw *countingWriter) {
				hugeHeader(w.Header(), fiftyMB)
				w.WriteHeader(http.StatusAccepted)
			},
			want: errCase{class: dps.Retryable, msg: "headers exceeded"},
		},
		{
			name: "a body that trickles one byte at a time",
			reply: func(w http.ResponseWriter, r *http.Request, cw *countingWriter) {
				w.Header().Set("Content-Length", "1000")
				w.WriteHeader(http.StatusAccepted)
				rc := http.NewResponseController(w)
				for i := 0; i < 1000; i++ {
					if _, err := cw.Write([]byte("{")); err != nil || rc.Flush() != nil {
						return
					}
					select {
					case <-r.Context().Done():
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			},
			want: errCase{status: 202, class: dps.Retryable, is: context.DeadlineExceeded, msg: "request timed out after 700ms", hint: "timed out"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sent countingWriter
			f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				sent.w = w
				tt.reply(w, r, &sent)
			})
			c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.Timeout = timeout })
			d := dps.NewSymmetricKeyDevice("dev-001", []byte("k"))

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := c.Register(context.Background(), d, nil)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)

			checkErr(t, err, tt.want)
			if elapsed > timeout+2*time.Second {
				t.Errorf("request took %v, want it bounded by the %v timeout", elapsed, timeout)
			}
			// The client reads at most 1 MiB of body; TLS buffers and the
			// race detector's shadow memory come on top.
			if got := after.TotalAlloc - before.TotalAlloc; got > 24<<20 {
				t.Errorf("client allocated %d MB for one request, want a bound well below the 50 MB sent", got>>20)
			}
			if got := sent.n.Load(); got > 16<<20 {
				t.Errorf("server wrote %d MB before the client hung up, want the client to stop reading early", got>>20)
			}
		})
	}
}

// TestHostileServersConcurrent sends 50 devices at once to a server that
// answers every request with 50 MB: memory in use stays bounded by the
// per-response limit, not by what the server sends.
func TestHostileServersConcurrent(t *testing.T) {
	const devices = 50
	f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		flood(w, 50<<20, ' ')
	})
	c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.Timeout = 5 * time.Second })
	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var wg sync.WaitGroup
	errs := make([]error, devices)
	for i := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Register(context.Background(), dps.NewSymmetricKeyDevice(fmt.Sprintf("dev-%03d", i), []byte("k")), nil)
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	for i, err := range errs {
		if !errors.Is(err, dps.ErrResponseTooLarge) {
			t.Errorf("device %d: got %v, want ErrResponseTooLarge", i, err)
		}
	}
	// 50 responses of at most 1 MiB each, plus buffers: far below the
	// 2.5 GB the server tried to send.
	if grew := int64(peak.Load()) - int64(base.HeapInuse); grew > 200<<20 {
		t.Errorf("heap in use grew by %d MB with %d devices, want at most about 1 MiB per device", grew>>20, devices)
	}
}

// TestSilentServers checks servers that accept a connection and then say
// nothing: before the TLS handshake, after it, or after the headers. Every
// operation gives up at the per-request timeout with a retryable error.
func TestSilentServers(t *testing.T) {
	const timeout = 500 * time.Millisecond

	// A TCP listener that accepts and never speaks TLS.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns []net.Conn
	var connsMu sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, conn)
			connsMu.Unlock()
		}
	}()
	t.Cleanup(func() {
		connsMu.Lock()
		defer connsMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})

	release := make(chan struct{})
	silentHTTP := startFake(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	t.Cleanup(func() { close(release) }) // before the server's Close, which waits for handlers

	x509 := mustDevice(t, mustPKI(t).inter, "dev-001", certs.Options{})
	sas := dps.NewSymmetricKeyDevice("dev-002", []byte("k"))
	endpoints := map[string]string{
		"no TLS handshake": "https://" + ln.Addr().String(),
		"no HTTP answer":   silentHTTP.URL,
	}
	for name, ep := range endpoints {
		c := mustClient(t, ep, func(cfg *dps.Config) { cfg.Timeout = timeout })
		for _, d := range []*dps.Device{x509, sas} {
			// A device makes one request at a time; devices run in parallel.
			t.Run(name+"/"+d.RegistrationID, func(t *testing.T) {
				t.Parallel()
				ops := []struct {
					op   string
					call func() error
				}{
					{"register", func() error { _, err := c.Register(context.Background(), d, nil); return err }},
					{"poll", func() error { _, err := c.OperationStatus(context.Background(), d, "4.op"); return err }},
					{"lookup", func() error { _, err := c.RegistrationStatus(context.Background(), d); return err }},
				}
				for _, o := range ops {
					start := time.Now()
					err := o.call()
					elapsed := time.Since(start)
					var de *dps.Error
					if !errors.As(err, &de) || de.HTTPStatus != 0 || de.Op != o.op {
						t.Fatalf("%s: got %v, want a transport *dps.Error", o.op, err)
					}
					if got := dps.Classify(err); got != dps.Retryable {
						t.Errorf("%s: Classify: got %v, want retryable (%v)", o.op, got, err)
					}
					if !strings.Contains(err.Error(), "timed out") && !strings.Contains(err.Error(), "timeout") {
						t.Errorf("%s: error %q does not say it timed out", o.op, err)
					}
					if elapsed < timeout/2 || elapsed > timeout+2*time.Second {
						t.Errorf("%s: gave up after %v, want about %v", o.op, elapsed, timeout)
					}
				}
			})
		}
	}
}

// TestCredentialsStayWithTheEndpoint redirects every kind of request to
// another TLS host that records connections: no request, no SAS token and
// no client certificate may reach it, whatever the redirect status.
func TestCredentialsStayWithTheEndpoint(t *testing.T) {
	var evilCerts atomic.Int64
	evil := startFake(t, dpsReplies, func(c *tls.Config) {
		c.ClientAuth = tls.RequestClientCert
		c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) > 0 {
				evilCerts.Add(1)
			}
			return nil
		}
	})
	x509Dev := mustDevice(t, mustPKI(t).inter, "dev-001", certs.Options{})
	sasDev := dps.NewSymmetricKeyDevice("dev-002", []byte("secret-device-key"))
	for _, code := range []int{301, 302, 303, 307, 308} {
		f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", evil.URL+r.URL.RequestURI())
			w.WriteHeader(code)
		})
		c := mustClient(t, f.URL)
		for _, d := range []*dps.Device{x509Dev, sasDev} {
			_, err1 := c.Register(context.Background(), d, nil)
			_, err2 := c.OperationStatus(context.Background(), d, "4.op")
			_, err3 := c.RegistrationStatus(context.Background(), d)
			for _, err := range []error{err1, err2, err3} {
				if !errors.Is(err, dps.ErrRedirectRefused) || dps.Classify(err) != dps.Fatal {
					t.Errorf("HTTP %d, %s: got %v, want a fatal ErrRedirectRefused", code, d.RegistrationID, err)
				}
			}
		}
	}
	if n := len(evil.seen()); n != 0 {
		t.Errorf("the other host received %d requests", n)
	}
	if n := evil.newConns.Load(); n != 0 {
		t.Errorf("the other host accepted %d connections, want none", n)
	}
	if n := evilCerts.Load(); n != 0 {
		t.Errorf("the other host was shown %d client certificates", n)
	}
}
