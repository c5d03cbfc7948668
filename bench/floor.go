package main

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"time"
)

// handshakeCrypto measures, on one core, the public-key operations that one
// X.509 device's TLS 1.2 handshake costs this machine, client and server
// together, with ECDSA P-256 keys (as certs fleet issues) and X25519:
//
//   - each side generates an X25519 key and computes the shared secret;
//   - the server signs its key exchange and the client verifies it;
//   - the client signs the handshake (CertificateVerify) and the server
//     verifies it;
//   - the server verifies the device certificate's signature by its CA.
//
// The client's check of the server chain is left out: dps-batch makes it
// once per run. With ECDSA P-256 keys on both sides (as the simulator and
// certs fleet use) and a server that checks only the device certificate's
// own signature, no client and server pair can do a device's handshake with
// less, so with every processor busy with nothing else, processors divided
// by perDevice is the most devices per second this machine can register
// over mTLS.
func handshakeCrypto(iterations, rounds int) (perDevice time.Duration, err error) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	digest := sha256.Sum256([]byte("handshake transcript"))
	sig, err := ecdsa.SignASN1(rand.Reader, signer, digest[:])
	if err != nil {
		return 0, err
	}
	x := ecdh.X25519()
	peer, err := x.GenerateKey(rand.Reader)
	if err != nil {
		return 0, err
	}
	best := time.Duration(0)
	for range rounds {
		start := time.Now()
		for range iterations {
			for range 2 { // client and server
				k, err := x.GenerateKey(rand.Reader)
				if err != nil {
					return 0, err
				}
				if _, err := k.ECDH(peer.PublicKey()); err != nil {
					return 0, err
				}
				if _, err := ecdsa.SignASN1(rand.Reader, signer, digest[:]); err != nil {
					return 0, err
				}
			}
			for range 3 { // key exchange, CertificateVerify, device certificate
				if !ecdsa.VerifyASN1(&signer.PublicKey, digest[:], sig) {
					return 0, fmt.Errorf("handshake crypto: signature does not verify")
				}
			}
		}
		if d := time.Since(start) / time.Duration(iterations); best == 0 || d < best {
			best = d
		}
	}
	return best, nil
}
