package dps_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// TestDeviceString checks that every way of printing a device shows the id
// and credential type but no key material.
func TestDeviceString(t *testing.T) {
	p := mustPKI(t)
	key := []byte("super-secret-device-key-material!")
	leaf, err := p.root.NewDevice("dev-001", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := certs.KeyPEM(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		d       *dps.Device
		want    string
		secrets []string
	}{
		{
			name:    "symmetric key",
			d:       dps.NewSymmetricKeyDevice("dev-002", key),
			want:    "dev-002 (symmetric key)",
			secrets: []string{string(key), base64.StdEncoding.EncodeToString(key), fmt.Sprint(key), fmt.Sprintf("%x", key)},
		},
		{
			name:    "x509",
			d:       dps.NewX509Device("dev-001", leaf.TLSCertificate()),
			want:    "dev-001 (x509 sha256:",
			secrets: []string{string(keyPEM), fmt.Sprint(leaf.Key)},
		},
		{name: "x509 without certificate", d: dps.NewX509Device("dev-003", tls.Certificate{}), want: "dev-003 (x509, no certificate)"},
		{name: "no credential", d: &dps.Device{RegistrationID: "dev-004"}, want: "dev-004 (no credential)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.d.String(); !strings.HasPrefix(got, tt.want) {
				t.Errorf("String(): got %q, want prefix %q", got, tt.want)
			}
			printed := fmt.Sprintf("%v|%+v|%#v|%s|%v|%+v|%#v", tt.d, tt.d, tt.d, tt.d, *tt.d, *tt.d, *tt.d)
			for _, s := range tt.secrets {
				if strings.Contains(printed, s) {
					t.Errorf("printing the device leaks key material: %s", printed)
				}
			}
		})
	}
}

// TestX509ConnectionReuse checks that one device's register and polls share
// one TLS connection, that Close closes it, and that a later request works.
func TestX509ConnectionReuse(t *testing.T) {
	f := startFake(t, dpsReplies)
	c := mustClient(t, f.URL)
	d := mustDevice(t, mustPKI(t).root, "dev-001", certs.Options{})
	ctx := context.Background()
	reg := mustRegister(t, c, d)
	for i := 0; i < 3; i++ {
		if _, err := c.OperationStatus(ctx, d, reg.Operation.OperationID); err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
	}
	if got := f.newConns.Load(); got != 1 {
		t.Errorf("connections for register + 3 polls: got %d, want 1", got)
	}
	d.Close()
	d.Close() // twice is fine
	eventually(t, "the server to see the connection closed", func() bool { return f.openConns() == 0 })
	mustRegister(t, c, d) // a closed device builds a new transport
	if got := f.newConns.Load(); got != 2 {
		t.Errorf("connections after Close and a new register: got %d, want 2", got)
	}
}

// TestConnectionSharing checks that X.509 devices never share a connection
// (each request carries its own device's certificate) and that
// symmetric-key devices do share the pool.
func TestConnectionSharing(t *testing.T) {
	p := mustPKI(t)
	t.Run("x509 devices", func(t *testing.T) {
		f := startFake(t, dpsReplies)
		c := mustClient(t, f.URL)
		ids := []string{"dev-a", "dev-b", "dev-a", "dev-b"}
		devs := map[string]*dps.Device{"dev-a": mustDevice(t, p.root, "dev-a", certs.Options{}), "dev-b": mustDevice(t, p.inter, "dev-b", certs.Options{})}
		for _, id := range ids {
			mustRegister(t, c, devs[id])
		}
		for i, r := range f.seen() {
			if got := r.PeerCerts[0].Subject.CommonName; got != ids[i] {
				t.Errorf("request %d: presented certificate %q, want %q", i, got, ids[i])
			}
		}
		if got := f.newConns.Load(); got != 2 {
			t.Errorf("connections for 2 devices: got %d, want 2", got)
		}
	})
	t.Run("symmetric-key devices", func(t *testing.T) {
		f := startFake(t, dpsReplies)
		c := mustClient(t, f.URL)
		for i := 0; i < 4; i++ {
			mustRegister(t, c, dps.NewSymmetricKeyDevice(fmt.Sprintf("dev-%d", i), []byte("k")))
		}
		if got := f.newConns.Load(); got != 1 {
			t.Errorf("connections for 4 sequential SAS devices: got %d, want 1", got)
		}
		c.Close()
		eventually(t, "Client.Close to close the pool", func() bool { return f.openConns() == 0 })
	})
}

// TestNoConnectionLeak registers many X.509 devices one after another and
// checks that closing each leaves no connection or goroutine behind.
func TestNoConnectionLeak(t *testing.T) {
	p := mustPKI(t)
	f := startFake(t, dpsReplies)
	c := mustClient(t, f.URL)
	const n = 200
	devs := make([]*dps.Device, n)
	for i := range devs {
		leaf, err := p.root.NewDevice(fmt.Sprintf("dev-%03d", i), certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		devs[i] = dps.NewX509Device(leaf.Cert.Subject.CommonName, leaf.TLSCertificate())
	}
	base := runtime.NumGoroutine()
	for _, d := range devs {
		r := mustRegister(t, c, d)
		if _, err := c.OperationStatus(context.Background(), d, r.Operation.OperationID); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	if got := f.newConns.Load(); got != n {
		t.Errorf("connections: got %d, want %d (one per device)", got, n)
	}
	eventually(t, "all server connections closed", func() bool { return f.openConns() == 0 })
	eventually(t, "client goroutines to exit", func() bool { return runtime.NumGoroutine() <= base+5 })
}

// TestKeyTypes checks that ECDSA, RSA and Ed25519 device keys authenticate,
// under TLS 1.2 and TLS 1.3.
func TestKeyTypes(t *testing.T) {
	p := mustPKI(t)
	for _, kt := range certs.KeyTypes {
		d := mustDevice(t, p.inter, "dev-"+strings.ReplaceAll(string(kt), "-", ""), certs.Options{KeyType: kt})
		for _, maxVer := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(fmt.Sprintf("%s %s", kt, tls.VersionName(maxVer)), func(t *testing.T) {
				f := startFake(t, dpsReplies, func(c *tls.Config) {
					c.MaxVersion = maxVer
					c.ClientAuth = tls.RequireAndVerifyClientCert
				})
				c := mustClient(t, f.URL)
				mustRegister(t, c, d)
				if got := f.seen()[0].PeerCerts[0].Subject.CommonName; got != d.RegistrationID {
					t.Errorf("server saw CN %q, want %q", got, d.RegistrationID)
				}
			})
		}
	}
}

// TestCertificateSentWhateverCANames checks that the device certificate is
// presented even when the server's certificate request lists CA names that
// do not include its issuer: DPS, not the client, decides what it accepts.
func TestCertificateSentWhateverCANames(t *testing.T) {
	for _, maxVer := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(maxVer), func(t *testing.T) {
			f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				if len(r.TLS.PeerCertificates) != 1 {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				dpsReplies(w, r)
			}, func(c *tls.Config) {
				c.MaxVersion = maxVer
				c.ClientAuth = tls.RequireAnyClientCert // names the test root, verifies nothing
			})
			c := mustClient(t, f.URL)
			d := mustDevice(t, mustPKI(t).other, "dev-001", certs.Options{})
			mustRegister(t, c, d)
		})
	}
}

// TestConcurrentDevices runs many devices at once through one Client and
// checks each gets its own answer (the server echoes the id it saw).
func TestConcurrentDevices(t *testing.T) {
	p := mustPKI(t)
	f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/") // "", scope, "registrations", id, ...
		id := parts[3]
		state := `{"registrationId":"` + id + `","status":"assigned","assignedHub":"hub-` + id + `.azure-devices.net",` +
			`"payload":{"pad":"` + strings.Repeat(id, 50) + `"}}`
		switch r.Method {
		case http.MethodPut:
			replyJSON(w, 202, `{"operationId":"op-`+id+`","status":"assigning"}`)
		case http.MethodGet:
			replyJSON(w, 200, `{"operationId":"`+parts[5]+`","status":"assigned","registrationState":`+state+`}`)
		}
	})
	c := mustClient(t, f.URL)
	const n = 40
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		var d *dps.Device
		if i%2 == 0 {
			d = dps.NewSymmetricKeyDevice(id, []byte("k"))
		} else {
			d = mustDevice(t, p.root, id, certs.Options{})
		}
		go func() {
			errs <- func() error {
				for j := 0; j < 5; j++ {
					r, err := c.Register(context.Background(), d, nil)
					if err != nil {
						return err
					}
					if r.Operation.OperationID != "op-"+id {
						return fmt.Errorf("%s: register answered %q", id, r.Operation.OperationID)
					}
					r, err = c.OperationStatus(context.Background(), d, r.Operation.OperationID)
					if err != nil {
						return err
					}
					if rs := r.Operation.RegistrationState; rs.RegistrationID != id || rs.AssignedHub != "hub-"+id+".azure-devices.net" ||
						!strings.Contains(string(rs.Payload), strings.Repeat(id, 50)) {
						return fmt.Errorf("%s: poll answered %+v", id, rs)
					}
				}
				return nil
			}()
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
