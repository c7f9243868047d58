// Package tdxtest is a test stand-in for Intel's TDX attestation PKI: its own
// root, PCK CA, PCK, QE and collateral signer. It is not trusted by production.
package tdxtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// Subjects as Intel issues them. go-tdx-guest checks the common names of the
// root, the PCK CA, the PCK leaf and the TCB signing certificate, so the test
// PKI uses the same names with its own keys; trust comes only from the pool.
var (
	RootSubject       = intelName("Intel SGX Root CA")
	PlatformCASubject = intelName("Intel SGX PCK Platform CA")
	PCKSubject        = intelName("Intel SGX PCK Certificate")
	TCBSignSubject    = intelName("Intel SGX TCB Signing")
)

func intelName(cn string) pkix.Name {
	return pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"},
		Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
}

// SGX extension OIDs (Intel SGX PCK Certificate and CRL Profile §1.3.5).
var (
	oidSGX    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidPPID   = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 1}
	oidTCB    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2}
	oidPCEID  = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 3}
	oidFMSPC  = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 4}
	oidSGXTyp = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
)

// Platform describes the (pretend) machine the PCK certificate is issued to.
type Platform struct {
	FMSPC  [6]byte
	PCEID  [2]byte
	PPID   [16]byte
	CPUSVN [16]byte // also the 16 SGX TCB component SVNs
	PCESVN uint16
}

// DefaultPlatform is the machine of the default PKI.
var DefaultPlatform = Platform{
	FMSPC:  [6]byte{0x90, 0xc0, 0x6f, 0x00, 0x00, 0x00},
	PCEID:  [2]byte{0x00, 0x00},
	PPID:   [16]byte{0x50, 0x50, 0x49, 0x44, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
	CPUSVN: [16]byte{3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0},
	PCESVN: 11,
}

// PKI is a complete test chain: root CA → PCK platform CA → PCK leaf, and a
// TCB signing certificate under the same root for collateral.
type PKI struct {
	Platform Platform

	RootKey, PCKCAKey, PCKKey, TCBSignKey *ecdsa.PrivateKey
	Root, PCKCA, PCK, TCBSign             *x509.Certificate

	// NotBefore and NotAfter bound every certificate and collateral item.
	NotBefore, NotAfter time.Time
}

// RootCRLURL and PCKCRLURL are what the test certificates name; they are
// Intel's URLs so a bundle serves real and test chains the same way.
const (
	RootCRLURL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
	PCKCRLURL  = "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
)

// Epoch is the reference "now" of the test PKI: certificates and collateral
// are valid around it, so tests may pin the verifier's clock to it. It is
// noon UTC of the day the process started, so evidence made with this PKI
// also verifies against the real clock (other processes, the CVM emulator)
// and never expires in the repository.
var Epoch = time.Now().UTC().Truncate(24 * time.Hour).Add(12 * time.Hour)

// NewPKI creates fresh keys and certificates for platform p.
func NewPKI(p Platform) (*PKI, error) {
	k := &PKI{Platform: p, NotBefore: Epoch.AddDate(-1, 0, 0), NotAfter: Epoch.AddDate(5, 0, 0)}
	var err error
	for _, kp := range []**ecdsa.PrivateKey{&k.RootKey, &k.PCKCAKey, &k.PCKKey, &k.TCBSignKey} {
		if *kp, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	if k.Root, err = k.issue(&x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: RootSubject, IsCA: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{RootCRLURL},
		SubjectKeyId: skid(&k.RootKey.PublicKey),
	}, nil, nil, &k.RootKey.PublicKey); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if k.PCKCA, err = k.issue(&x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: PlatformCASubject, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{RootCRLURL},
		SubjectKeyId: skid(&k.PCKCAKey.PublicKey),
	}, k.Root, k.RootKey, &k.PCKCAKey.PublicKey); err != nil {
		return nil, fmt.Errorf("PCK CA: %w", err)
	}
	if k.TCBSign, err = k.issue(&x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: TCBSignSubject,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, CRLDistributionPoints: []string{RootCRLURL},
		SubjectKeyId: skid(&k.TCBSignKey.PublicKey),
	}, k.Root, k.RootKey, &k.TCBSignKey.PublicKey); err != nil {
		return nil, fmt.Errorf("TCB signing: %w", err)
	}
	if k.PCK, err = k.IssuePCK(big.NewInt(0x5c4b), &k.PCKKey.PublicKey); err != nil {
		return nil, err
	}
	return k, nil
}

// IssuePCK issues a PCK leaf for pub under the PCK CA, carrying the SGX
// extensions of k.Platform (6 extensions, as go-tdx-guest's pcs requires).
func (k *PKI) IssuePCK(serial *big.Int, pub *ecdsa.PublicKey) (*x509.Certificate, error) {
	ext, err := SGXExtension(k.Platform)
	if err != nil {
		return nil, err
	}
	c, err := k.issue(&x509.Certificate{
		SerialNumber: serial, Subject: PCKSubject,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		BasicConstraintsValid: true, CRLDistributionPoints: []string{PCKCRLURL},
		SubjectKeyId: skid(pub), ExtraExtensions: []pkix.Extension{ext},
	}, k.PCKCA, k.PCKCAKey, pub)
	if err != nil {
		return nil, fmt.Errorf("PCK: %w", err)
	}
	return c, nil
}

func (k *PKI) issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, pub *ecdsa.PublicKey) (*x509.Certificate, error) {
	tmpl.NotBefore, tmpl.NotAfter = k.NotBefore, k.NotAfter
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	if tmpl.IsCA {
		tmpl.BasicConstraintsValid = true
	}
	if parent == nil {
		parent, parentKey = tmpl, k.RootKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func skid(pub *ecdsa.PublicKey) []byte {
	b, _ := pub.Bytes()
	h := sha256.Sum256(b)
	return h[:20]
}

type sgxOctets struct {
	ID    asn1.ObjectIdentifier
	Value []byte
}

type sgxInt struct {
	ID    asn1.ObjectIdentifier
	Value int
}

type sgxEnum struct {
	ID    asn1.ObjectIdentifier
	Value asn1.Enumerated
}

type sgxTCB struct {
	ID         asn1.ObjectIdentifier
	Components []any
}

// SGXExtension encodes the SGX extensions of p (Intel SGX PCK Certificate
// and CRL Profile §1.3.5: PPID, TCB with 16 component SVNs + PCESVN + CPUSVN,
// PCE-ID, FMSPC, SGX type).
func SGXExtension(p Platform) (pkix.Extension, error) {
	comps := make([]any, 0, 18)
	for i := range 16 {
		comps = append(comps, sgxInt{append(slicesClone(oidTCB), i+1), int(p.CPUSVN[i])})
	}
	comps = append(comps, sgxInt{append(slicesClone(oidTCB), 17), int(p.PCESVN)})
	comps = append(comps, sgxOctets{append(slicesClone(oidTCB), 18), p.CPUSVN[:]})
	v, err := asn1.Marshal([]any{
		sgxOctets{oidPPID, p.PPID[:]},
		sgxTCB{oidTCB, comps},
		sgxOctets{oidPCEID, p.PCEID[:]},
		sgxOctets{oidFMSPC, p.FMSPC[:]},
		sgxEnum{oidSGXTyp, 0},
	})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("SGX extension: %w", err)
	}
	return pkix.Extension{Id: oidSGX, Value: v}, nil
}

func slicesClone(o asn1.ObjectIdentifier) asn1.ObjectIdentifier {
	return append(asn1.ObjectIdentifier(nil), o...)
}

// Pool is a CertPool holding only the test root: what a verifier pins.
func (k *PKI) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(k.Root)
	return p
}

// ChainPEM is the type-5 certification data: PCK leaf ‖ PCK CA ‖ root, PEM.
func (k *PKI) ChainPEM() []byte {
	return PEM(k.PCK, k.PCKCA, k.Root)
}

// PEM concatenates certificates as PEM blocks.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// CRL issues a CRL signed by issuer revoking serials, valid around Epoch.
func CRL(issuer *x509.Certificate, key *ecdsa.PrivateKey, thisUpdate, nextUpdate time.Time, serials ...*big.Int) ([]byte, error) {
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: thisUpdate, NextUpdate: nextUpdate,
		SignatureAlgorithm: x509.ECDSAWithSHA256}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: thisUpdate})
	}
	return x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
}
