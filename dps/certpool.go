package dps

import (
	"crypto/x509"
	"fmt"
	"os"
)

// SystemPoolWithCAFile returns the system root pool plus the PEM
// certificates in the file at path (for example the simulator's CA), for
// Config.RootCAs. Errors name the file. If the system pool is unavailable
// the result holds only the file's certificates.
func SystemPoolWithCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificates found", path)
	}
	return pool, nil
}
