package certs

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// CertPEM returns certs as concatenated PEM "CERTIFICATE" blocks, in order.
func CertPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		// Encoding to a bytes.Buffer cannot fail.
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// KeyPEM returns key as an unencrypted PKCS#8 "PRIVATE KEY" PEM block.
func KeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key as PKCS#8: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertsPEM returns every "CERTIFICATE" block in data, in order. Other
// blocks are ignored; data without any certificate is an error.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// errEncryptedKey explains how to use an encrypted key file.
var errEncryptedKey = errors.New("encrypted private keys are not supported: decrypt it with openssl pkey -in K -out K2")

// ParseKeyPEM returns the first private key in data: PKCS#8 "PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY" (what openssl writes by
// default for some commands). Other blocks, such as "EC PARAMETERS", are
// skipped. Encrypted keys are refused with a hint. Errors never include key
// material.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key block found")
		}
		if block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] == "4,ENCRYPTED" {
			return nil, errEncryptedKey
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s block: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s block holds a %T, which cannot sign", block.Type, key)
		}
		return signer, nil
	}
}

// LoadCA reads a CA certificate and its private key from PEM files. The
// certificate file may hold a chain: the first certificate is the CA and the
// others become its Parents (a self-signed root among them is dropped). It
// refuses a certificate that is not a CA and a key that does not match the
// certificate. Errors name the file.
func LoadCA(certPath, keyPath string) (*CA, error) {
	certData, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	certs, err := ParseCertsPEM(certData)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s: %q is not a CA certificate (basic constraints CA:FALSE or missing)", certPath, cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %s: %q lacks the certificate-signing key usage", certPath, cert.Subject.CommonName)
	}
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := ParseKeyPEM(keyData)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not match the certificate in %s (%q)", keyPath, certPath, cert.Subject.CommonName)
	}
	ca := &CA{Cert: cert, Key: key}
	for _, p := range certs[1:] {
		if !isSelfSigned(p) {
			ca.Parents = append(ca.Parents, p)
		}
	}
	return ca, nil
}

// publicKeysEqual compares two public keys of any supported type.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}
