package dps

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
)

// TestServerVerifierCache checks that the verifier accepts what crypto/tls
// accepts, refuses what it refuses, and remembers only successes, only for
// the exact chain and only until the chain expires.
func TestServerVerifierCache(t *testing.T) {
	root, err := certs.NewRoot("verifier root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("verifier intermediate", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leafA, err := inter.NewServer([]string{"dps.test"}, certs.Options{Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leafB, err := inter.NewServer([]string{"dps.test"}, certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	chainA := [][]byte{leafA.Cert.Raw, inter.Cert.Raw}
	chainB := [][]byte{leafB.Cert.Raw, inter.Cert.Raw}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	now := time.Now()
	clock := func() time.Time { return now }
	noProxy := func(*http.Request) (*url.URL, error) { return nil, nil }
	endpoint := func(host string) *url.URL { return &url.URL{Scheme: "https", Host: host + ":443"} }
	newVerifier := func(roots *x509.CertPool, host string, clock func() time.Time) *serverVerifier {
		t.Helper()
		v := newServerVerifier(endpoint(host), noProxy, roots, clock)
		if v == nil {
			t.Fatalf("no verifier for %s", host)
		}
		return v
	}

	var verr *tls.CertificateVerificationError
	t.Run("untrusted chain is refused with crypto/tls's error, every time", func(t *testing.T) {
		v := newVerifier(x509.NewCertPool(), "dps.test", clock)
		for range 2 {
			err := v.verify(chainA, nil)
			var unk x509.UnknownAuthorityError
			if !errors.As(err, &verr) || !errors.As(err, &unk) {
				t.Fatalf("verify = %v, want *tls.CertificateVerificationError wrapping x509.UnknownAuthorityError", err)
			}
		}
		if len(v.verified) != 0 {
			t.Errorf("a failure was remembered: %d entries", len(v.verified))
		}
	})
	t.Run("wrong host name is refused", func(t *testing.T) {
		v := newVerifier(roots, "other.test", clock)
		var host x509.HostnameError
		if err := v.verify(chainA, nil); !errors.As(err, &host) {
			t.Fatalf("verify = %v, want x509.HostnameError", err)
		}
	})
	t.Run("no intermediate sent is refused", func(t *testing.T) {
		v := newVerifier(roots, "dps.test", clock)
		if err := v.verify(chainA[:1], nil); !errors.As(err, &verr) {
			t.Fatalf("verify = %v, want a verification error", err)
		}
	})
	t.Run("success is remembered for that chain only", func(t *testing.T) {
		v := newVerifier(roots, "dps.test", clock)
		if err := v.verify(chainA, nil); err != nil {
			t.Fatalf("first verify: %v", err)
		}
		// Trust nothing from now on: only a remembered chain still passes.
		v.roots = x509.NewCertPool()
		if err := v.verify(chainA, nil); err != nil {
			t.Errorf("same chain again: %v, want it remembered", err)
		}
		if err := v.verify(chainB, nil); !errors.As(err, &verr) {
			t.Errorf("another chain: %v, want it verified in full (and refused)", err)
		}
		if err := v.verify([][]byte{leafA.Cert.Raw}, nil); !errors.As(err, &verr) {
			t.Errorf("same leaf without its intermediate: %v, want it verified in full", err)
		}
	})
	t.Run("a remembered chain is verified again once it expires", func(t *testing.T) {
		v := newVerifier(roots, "dps.test", clock)
		if err := v.verify(chainA, nil); err != nil {
			t.Fatalf("first verify: %v", err)
		}
		later := leafA.Cert.NotAfter.Add(time.Second)
		v.now = func() time.Time { return later }
		var inval x509.CertificateInvalidError
		if err := v.verify(chainA, nil); !errors.As(err, &inval) || inval.Reason != x509.Expired {
			t.Fatalf("verify after expiry = %v, want x509.CertificateInvalidError (Expired)", err)
		}
	})
	t.Run("a remembered chain is verified again if the clock goes back before it", func(t *testing.T) {
		v := newVerifier(roots, "dps.test", clock)
		if err := v.verify(chainA, nil); err != nil {
			t.Fatalf("first verify: %v", err)
		}
		earlier := leafA.Cert.NotBefore.Add(-time.Second)
		v.now = func() time.Time { return earlier }
		var inval x509.CertificateInvalidError
		if err := v.verify(chainA, nil); !errors.As(err, &inval) || inval.Reason != x509.Expired {
			t.Fatalf("verify before NotBefore = %v, want x509.CertificateInvalidError (Expired: not yet valid)", err)
		}
	})
	t.Run("crypto/tls keeps the check where the host name may differ", func(t *testing.T) {
		httpsProxy := func(*http.Request) (*url.URL, error) { return url.Parse("https://proxy.test:3128") }
		httpProxy := func(*http.Request) (*url.URL, error) { return url.Parse("http://proxy.test:3128") }
		if v := newServerVerifier(endpoint("dps.test"), httpsProxy, roots, clock); v != nil {
			t.Error("verifier used behind an https:// proxy, whose certificate the same configuration checks")
		}
		if v := newServerVerifier(endpoint("dps.test"), httpProxy, roots, clock); v == nil {
			t.Error("no verifier behind an http:// proxy (a plain CONNECT tunnel)")
		}
		if v := newServerVerifier(endpoint("dps.bücher.test"), noProxy, roots, clock); v != nil {
			t.Error("verifier used for a host name crypto/tls sends as punycode")
		}
		conf := &tls.Config{}
		(*serverVerifier)(nil).apply(conf)
		if conf.InsecureSkipVerify || conf.VerifyPeerCertificate != nil {
			t.Error("a nil verifier changed the configuration")
		}
	})
	t.Run("garbage is refused", func(t *testing.T) {
		v := newVerifier(roots, "dps.test", clock)
		if err := v.verify(nil, nil); err == nil {
			t.Error("no certificates: accepted")
		}
		if err := v.verify([][]byte{[]byte("not DER")}, nil); err == nil {
			t.Error("garbage certificate: accepted")
		}
	})
	t.Run("a resuming configuration is refused", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("apply on a configuration with a session cache did not panic")
			}
		}()
		newVerifier(roots, "dps.test", clock).apply(&tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(1)})
	})
}
