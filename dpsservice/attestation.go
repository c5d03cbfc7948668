package dpsservice

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"strings"
)

// X509ClientAttestation is the attestation of an individual X.509
// enrollment: the device's own certificate, sent as base64 DER (what the
// Azure CLI and the .NET SDK send).
func X509ClientAttestation(cert *x509.Certificate) *AttestationMechanism {
	return &AttestationMechanism{Type: AttestationX509, X509: &X509Attestation{
		ClientCertificates: &X509Certificates{Primary: &X509CertificateWithInfo{Certificate: base64.StdEncoding.EncodeToString(cert.Raw)}},
	}}
}

// X509SigningAttestation is the attestation of an X.509 enrollment group
// whose CA (root or intermediate) certificate is uploaded to the group.
func X509SigningAttestation(ca *x509.Certificate) *AttestationMechanism {
	return &AttestationMechanism{Type: AttestationX509, X509: &X509Attestation{
		SigningCertificates: &X509Certificates{Primary: &X509CertificateWithInfo{Certificate: base64.StdEncoding.EncodeToString(ca.Raw)}},
	}}
}

// X509CAReferenceAttestation is the attestation of an X.509 enrollment
// group whose CA is a certificate uploaded (and verified) on the instance,
// named name.
func X509CAReferenceAttestation(name string) *AttestationMechanism {
	return &AttestationMechanism{Type: AttestationX509, X509: &X509Attestation{CAReferences: &X509CAReferences{Primary: name}}}
}

// SymmetricKeyAttestationOf is a symmetric-key attestation with the given
// base64 keys ("" lets the service generate one).
func SymmetricKeyAttestationOf(primary, secondary string) *AttestationMechanism {
	return &AttestationMechanism{Type: AttestationSymmetricKey, SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: primary, SecondaryKey: secondary}}
}

// Comparison is the outcome of CompareAttestation.
type Comparison int

// The comparisons.
const (
	// Same: the record holds the attestation that was asked for.
	Same Comparison = iota + 1
	// Different: the record holds another attestation.
	Different
	// Unknown: the record does not show enough to tell (no certificate
	// info, no keys).
	Unknown
)

// String returns "same", "different" or "unknown".
func (c Comparison) String() string {
	switch c {
	case Same:
		return "same"
	case Different:
		return "different"
	case Unknown:
		return "unknown"
	}
	return "comparison?"
}

// CompareAttestation compares the attestation want (as it would be sent)
// with got (as the service sends a stored record back). X.509 certificates
// compare by SHA-256 thumbprint (the service sends certificate info, not
// the certificate); symmetric keys by value, the secondary key only when
// want has one (the service generates one otherwise). why says what
// differs, without key material.
func CompareAttestation(want, got *AttestationMechanism) (c Comparison, why string) {
	switch {
	case want == nil || got == nil:
		return Unknown, "no attestation to compare"
	case !strings.EqualFold(want.Type, got.Type):
		return Different, "attestation type " + got.Type + ", not " + want.Type
	}
	switch want.Type {
	case AttestationSymmetricKey:
		if want.SymmetricKey == nil {
			return Unknown, "no symmetric key to compare"
		}
		if got.SymmetricKey == nil || got.SymmetricKey.PrimaryKey == "" {
			return Unknown, "the service did not show the enrollment's keys"
		}
		if !sameKey(want.SymmetricKey.PrimaryKey, got.SymmetricKey.PrimaryKey) {
			return Different, "a different primary symmetric key"
		}
		if want.SymmetricKey.SecondaryKey != "" && !sameKey(want.SymmetricKey.SecondaryKey, got.SymmetricKey.SecondaryKey) {
			return Different, "a different secondary symmetric key"
		}
		return Same, ""
	case AttestationX509:
		if want.X509 == nil {
			return Unknown, "no certificate to compare"
		}
		if got.X509 == nil {
			return Unknown, "the service did not show the enrollment's certificates"
		}
		return compareX509(want.X509, got.X509)
	}
	return Unknown, "attestation type " + want.Type + " is not compared"
}

// compareX509 compares the primary certificate or CA reference of each
// kind want sets.
func compareX509(want, got *X509Attestation) (Comparison, string) {
	type pair struct {
		name      string
		want, got *X509Certificates
	}
	compared := false
	for _, p := range []pair{{"client", want.ClientCertificates, got.ClientCertificates}, {"signing", want.SigningCertificates, got.SigningCertificates}} {
		if p.want == nil || p.want.Primary == nil {
			continue
		}
		if p.got == nil || p.got.Primary == nil {
			return Different, "no primary " + p.name + " certificate"
		}
		c, why := compareCert(p.want.Primary, p.got.Primary)
		if c != Same {
			return c, p.name + " certificate: " + why
		}
		compared = true
	}
	if w := want.CAReferences; w != nil && w.Primary != "" {
		if got.CAReferences == nil || got.CAReferences.Primary != w.Primary {
			return Different, "a different CA reference"
		}
		compared = true
	}
	if !compared {
		return Unknown, "no certificate to compare"
	}
	return Same, ""
}

// compareCert compares one certificate by thumbprint.
func compareCert(want, got *X509CertificateWithInfo) (Comparison, string) {
	der := CertificateDER(want.Certificate)
	if der == nil {
		return Unknown, "the certificate sent is not PEM or base64 DER"
	}
	sum := sha256.Sum256(der)
	thumb := hex.EncodeToString(sum[:])
	if got.Info != nil && got.Info.SHA256Thumbprint != "" {
		if normThumb(got.Info.SHA256Thumbprint) == thumb {
			return Same, ""
		}
		return Different, "SHA-256 thumbprint " + got.Info.SHA256Thumbprint + ", not " + strings.ToUpper(thumb)
	}
	if g := CertificateDER(got.Certificate); g != nil {
		if bytes.Equal(g, der) {
			return Same, ""
		}
		return Different, "another certificate"
	}
	return Unknown, "the service showed no certificate information"
}

// CertificateDER decodes a certificate field as DPS accepts it: PEM, base64
// DER, or base64 of PEM. It returns nil when s is none of these.
func CertificateDER(s string) []byte {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	if b, _ := pem.Decode([]byte(s)); b != nil && b.Type == "CERTIFICATE" {
		return b.Bytes
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		return nil
	}
	if b, _ := pem.Decode(raw); b != nil && b.Type == "CERTIFICATE" {
		return b.Bytes
	}
	if _, err := x509.ParseCertificate(raw); err != nil {
		return nil
	}
	return raw
}

// normThumb lower-cases a thumbprint and drops separators.
func normThumb(s string) string {
	return strings.ToLower(strings.NewReplacer(":", "", " ", "", "-", "").Replace(s))
}

// sameKey compares two base64 keys by their decoded bytes (so padding and
// alphabet do not matter), in constant time.
func sameKey(a, b string) bool {
	ka, errA := decodeKey(a)
	kb, errB := decodeKey(b)
	if errA != nil || errB != nil {
		return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
	}
	return subtle.ConstantTimeCompare(ka, kb) == 1
}
