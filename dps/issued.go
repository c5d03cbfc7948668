package dps

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
)

// ErrNoIssuedChain means a final result carries no issued certificate
// chain, though the registration sent a CSR.
var ErrNoIssuedChain = errors.New("the answer carries no issuedCertificateChain")

// IssuedChain decodes the certificate chain DPS issued at registration
// (api-version CertificateIssuanceAPIVersion): base64 DER certificates,
// the issued leaf first, then intermediates, ending with the root. It
// returns ErrNoIssuedChain when the result has none, and an error naming the
// entry when one is not a base64 DER certificate.
func (r *DeviceRegistrationResult) IssuedChain() ([]*x509.Certificate, error) {
	if r == nil || len(r.IssuedCertificateChain) == 0 {
		return nil, ErrNoIssuedChain
	}
	chain := make([]*x509.Certificate, 0, len(r.IssuedCertificateChain))
	for i, s := range r.IssuedCertificateChain {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: issuedCertificateChain[%d] is not base64: %v", ErrProtocol, i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: issuedCertificateChain[%d] is not a DER certificate: %v", ErrProtocol, i, err)
		}
		chain = append(chain, c)
	}
	return chain, nil
}
