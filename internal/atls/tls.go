package atls

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// alpn names the protocol inside the TLS session, so an aTLS endpoint never
// mistakes another TLS protocol's peer for one of its own (or vice versa).
const alpn = "palisade-atls/1"

// certLifetime is how long the process reuses one ephemeral certificate.
const certLifetime = 10 * time.Minute

// certs is the process's ephemeral certificate. Reusing it across
// connections is as sound as one per connection: the certificate
// authenticates nothing, and evidence binds each session's exporter, which
// derives from that session's own ECDHE secret and transcript (RFC 8446
// §7.1, §7.5), not from the certificate key. It saves a P-256 key generation
// and a signature per connection, a fifth of keyd's own CPU per admission.
var certs certCache

type certCache struct {
	mu   sync.Mutex
	cert tls.Certificate
	made time.Time
}

// get returns the cached certificate if it was made less than certLifetime
// before now (by the caller's clock), else a new one.
func (c *certCache) get(now time.Time) (tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert.Certificate != nil && !now.Before(c.made) && now.Sub(c.made) < certLifetime {
		return c.cert, nil
	}
	cert, err := newCertificate(now)
	if err != nil {
		return tls.Certificate{}, err
	}
	c.cert, c.made = cert, now
	return cert, nil
}

// newCertificate makes an ephemeral, self-signed certificate. Nobody trusts it: it only gives TLS 1.3 a key to prove
// possession of; the attestation bound to the exporter authenticates.
func newCertificate(now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ephemeral key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ephemeral certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "palisade-atls ephemeral"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ephemeral certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// tlsConfig is TLS 1.3 only, one ephemeral certificate on each side, client
// certificate required, no CA, no resumption.
func tlsConfig(server bool, cert tls.Certificate, now func() time.Time) *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpn},
		Time:         now,
		// Without a CA the chain is not verified (InsecureSkipVerify on the
		// client, RequireAnyClientCert on the server); CertificateVerify is
		// still checked, and checkPeerCertificate enforces the shape.
		VerifyPeerCertificate: checkPeerCertificate,
		// Every connection runs a full handshake with fresh key shares, so
		// every exporter is fresh.
		SessionTicketsDisabled: true,
	}
	if server {
		c.ClientAuth = tls.RequireAnyClientCert
	} else {
		c.InsecureSkipVerify = true
		c.ServerName = "palisade-atls"
	}
	return c
}

// checkPeerCertificate accepts exactly one certificate with a P-256 or
// Ed25519 key; its identity means nothing until the peer's evidence binds
// this session.
func checkPeerCertificate(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) != 1 {
		return fmt.Errorf("atls: peer sent %d certificates, want exactly 1", len(raw))
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("atls: peer certificate: %w", err)
	}
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("atls: peer certificate: ECDSA key not on P-256")
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("atls: peer certificate: key type %T, want ECDSA P-256 or Ed25519", cert.PublicKey)
	}
	return nil
}
