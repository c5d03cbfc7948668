package dpssim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/certs"
)

// TLSConfig returns the server TLS configuration DPS clients expect:
// TLS 1.2 (the only version DPS supports), HTTP/1.1, and client
// certificates requested but neither required (symmetric-key devices send
// none) nor verified by the TLS layer (the server checks them against the
// enrollments, so it can answer 401002 like DPS instead of failing the
// handshake). The handshake still proves the client holds the leaf's key.
//
// A zero cert leaves Certificates empty, for httptest.Server.StartTLS to
// fill with its own:
//
//	ts := httptest.NewUnstartedServer(sim)
//	ts.TLS = sim.TLSConfig(tls.Certificate{})
//	ts.StartTLS()
func (s *Server) TLSConfig(cert tls.Certificate) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		MaxVersion: tls.VersionTLS12,
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	}
	if len(cert.Certificate) > 0 {
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

// StartOptions configures Start.
type StartOptions struct {
	// Addr is the listen address; "" means "127.0.0.1:0" (a free port).
	Addr string
	// CA issues the server certificate; nil means a new CA is made (its
	// certificate is in Running.CAPEM for clients to trust).
	CA *certs.CA
	// AllowNonLoopback permits listening on addresses other than
	// 127.0.0.0/8, ::1 and localhost. Off by default: the simulator and
	// its admin API are meant for this machine only.
	AllowNonLoopback bool
	// ErrorLog receives net/http's errors (TLS handshake failures of
	// clients that do not trust the CA, for instance); nil discards them.
	ErrorLog *log.Logger
}

// Running is a simulator serving HTTPS.
type Running struct {
	// URL is the endpoint to give clients, e.g. "https://127.0.0.1:41234".
	URL string
	// Addr is the address actually listened on.
	Addr string
	// CA issued the server certificate; CAPEM is its certificate as PEM and
	// CAPool a pool holding it, for clients.
	CA     *certs.CA
	CAPEM  []byte
	CAPool *x509.CertPool

	srv  *http.Server
	stop context.CancelFunc // ends the server's lifetime context
	done chan struct{}
	err  error
}

// lifeKey is the request context key under which Start stores a context
// that ends when the server is closed or shut down. Detached work (late
// register effects) stops with it rather than with the client's request.
type lifeKey struct{}

// lifeContext returns the serving server's lifetime context, or
// context.Background() when the handler is served some other way (httptest):
// detached work then ends on its own timer.
func lifeContext(r *http.Request) context.Context {
	if ctx, ok := r.Context().Value(lifeKey{}).(context.Context); ok {
		return ctx
	}
	return context.Background()
}

// StartTLS serves s on addr ("127.0.0.1:0" picks a free port) with a new
// CA and a server certificate for localhost, 127.0.0.1 and ::1. Only
// loopback addresses are accepted.
func StartTLS(s *Server, addr string) (*Running, error) {
	return Start(s, StartOptions{Addr: addr})
}

// Start serves s over HTTPS as opts says, in a background goroutine.
func Start(s *Server, opts StartOptions) (*Running, error) {
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	if !opts.AllowNonLoopback && !IsLoopback(host) {
		return nil, fmt.Errorf("listen address %q is not a loopback address (127.0.0.1, ::1 or localhost); the simulator serves this machine only unless non-loopback listening is allowed explicitly", addr)
	}
	ca := opts.CA
	if ca == nil {
		if ca, err = NewServerCA(); err != nil {
			return nil, err
		}
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if host != "" && !contains(hosts, host) {
		hosts = append(hosts, host)
	}
	leaf, err := ca.NewServer(hosts, certs.Options{})
	if err != nil {
		return nil, fmt.Errorf("simulator server certificate: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	errLog := opts.ErrorLog
	if errLog == nil {
		errLog = log.New(io.Discard, "", 0)
	}
	life, stop := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           s,
		TLSConfig:         s.TLSConfig(leaf.TLSCertificate()),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(life, lifeKey{}, life)
		},
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	run := &Running{
		URL:    "https://" + urlHost(ln.Addr()),
		Addr:   ln.Addr().String(),
		CA:     ca,
		CAPEM:  certs.CertPEM(ca.Cert),
		CAPool: pool,
		srv:    srv,
		stop:   stop,
		done:   make(chan struct{}),
	}
	go func() {
		defer close(run.done)
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			run.err = err
			stop()
		}
	}()
	return run, nil
}

// NewServerCA makes a CA for a simulator's server certificate.
func NewServerCA() (*certs.CA, error) {
	ca, err := certs.NewRoot("dpssim local server CA", certs.Options{})
	if err != nil {
		return nil, fmt.Errorf("simulator server CA: %w", err)
	}
	return ca, nil
}

// ClientTLSConfig returns a client configuration that trusts the server and
// presents certs (none for symmetric-key devices).
func (r *Running) ClientTLSConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: r.CAPool, Certificates: certs, MinVersion: tls.VersionTLS12}
}

// Done is closed when the server has stopped serving.
func (r *Running) Done() <-chan struct{} { return r.done }

// Err returns why serving stopped, once Done is closed; nil after Close or
// Shutdown.
func (r *Running) Err() error {
	<-r.done
	return r.err
}

// Shutdown stops accepting connections and waits for requests in flight
// (held register requests and late ones still connected included) until
// ctx is done. Late register effects still pending then (their clients
// gone, or ctx done first) are abandoned.
func (r *Running) Shutdown(ctx context.Context) error {
	err := r.srv.Shutdown(ctx)
	r.stop()
	<-r.done
	return err
}

// Close stops the server at once, closing every connection and abandoning
// late register effects still pending.
func (r *Running) Close() error {
	// Connections first: handlers that see their context end must find
	// them closed, not answer on them.
	err := r.srv.Close()
	r.stop()
	<-r.done
	return err
}

// IsLoopback reports whether host (a name or an IP address, without port)
// is this machine only: localhost, 127.0.0.0/8 or ::1.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func urlHost(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	return net.JoinHostPort(ta.IP.String(), fmt.Sprint(ta.Port))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
