package dps_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

func TestSystemPoolWithCAFile(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, certs.CertPEM(mustPKI(t).root.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	t.Run("trusts the file", func(t *testing.T) {
		pool, err := dps.SystemPoolWithCAFile(caFile)
		if err != nil {
			t.Fatalf("SystemPoolWithCAFile: %v", err)
		}
		f := startFake(t, dpsReplies)
		c, err := dps.NewClient(dps.Config{Endpoint: f.URL, IDScope: testScope, RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Register(context.Background(), dps.NewSymmetricKeyDevice("dev-001", []byte("k")), nil); err != nil {
			t.Errorf("Register with the CA file pool: %v", err)
		}
	})
	for _, tt := range []struct{ name, path, want string }{
		{"missing file", missing, "missing.pem: no such file"},
		{"no certificates", empty, "empty.pem: no PEM certificates"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dps.SystemPoolWithCAFile(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
