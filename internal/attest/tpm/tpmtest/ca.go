package tpmtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
)

// TCG OIDs (TCG EK Credential Profile 2.0 §3.2, TCG OID registry).
var (
	oidSAN             = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidEKCertificate   = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// CA is an in-memory EK certificate authority of a TPM vendor: an ECDSA
// P-256 root and an intermediate that issues EK certificates, as real
// vendors' chains are.
type CA struct {
	Root, Intermediate *x509.Certificate
	rootKey, interKey  *ecdsa.PrivateKey
	serial             int64
}

// NewCA creates a CA whose certificates name vendor.
func NewCA(vendor string) (*CA, error) {
	ca := &CA{serial: 1}
	var err error
	if ca.rootKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if ca.interKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	now := time.Now()
	root := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{vendor}, CommonName: vendor + " EK Root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(20 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, root, root, ca.rootKey.Public(), ca.rootKey)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	if ca.Root, err = x509.ParseCertificate(der); err != nil {
		return nil, err
	}
	inter := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{Organization: []string{vendor}, CommonName: vendor + " EK Intermediate CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(15 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err = x509.CreateCertificate(rand.Reader, inter, ca.Root, ca.interKey.Public(), ca.rootKey)
	if err != nil {
		return nil, fmt.Errorf("intermediate certificate: %w", err)
	}
	if ca.Intermediate, err = x509.ParseCertificate(der); err != nil {
		return nil, err
	}
	return ca, nil
}

// Roots is a pool holding the root only.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root)
	return p
}

// Intermediates is a pool holding the intermediate only.
func (ca *CA) Intermediates() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Intermediate)
	return p
}

// tcgSAN encodes the subjectAltName of an EK certificate: one directoryName
// holding the TPM manufacturer, model and version (EK Credential Profile
// §3.2.9). It is critical because the subject is empty (RFC 5280 §4.2.1.6).
func tcgSAN(manufacturer, model, version string, extra ...pkix.AttributeTypeAndValue) ([]byte, error) {
	attr := func(oid asn1.ObjectIdentifier, v string) pkix.RelativeDistinguishedNameSET {
		return pkix.RelativeDistinguishedNameSET{{Type: oid, Value: v}}
	}
	rdns := pkix.RDNSequence{attr(oidTPMManufacturer, manufacturer), attr(oidTPMModel, model), attr(oidTPMVersion, version)}
	for _, a := range extra {
		rdns = append(rdns, pkix.RelativeDistinguishedNameSET{a})
	}
	name, err := asn1.Marshal(rdns)
	if err != nil {
		return nil, err
	}
	// directoryName is [4] EXPLICIT Name (RFC 5280 §4.2.1.6: Name is a CHOICE).
	return asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
}

// EKProfile varies an EK certificate away from what vendors issue, for
// negative tests.
type EKProfile struct {
	// OmitEKU leaves out the tcg-kp-EKCertificate extended key usage.
	OmitEKU bool
	// SANExtra are added to the SAN's directoryName after the TCG
	// attributes.
	SANExtra []pkix.AttributeTypeAndValue
}

// IssueEK certifies an EK public key the way TPM vendors do: empty subject,
// critical SAN with the TCG TPM attributes, the tcg-kp-EKCertificate EKU,
// keyEncipherment (RSA) or keyAgreement (ECC).
func (ca *CA) IssueEK(pub crypto.PublicKey) ([]byte, error) {
	return ca.IssueEKProfile(pub, EKProfile{})
}

// IssueEKProfile is IssueEK with the deviations of p.
func (ca *CA) IssueEKProfile(pub crypto.PublicKey, p EKProfile) ([]byte, error) {
	san, err := tcgSAN("id:50414C49", "palisade-sim", "id:00010002", p.SANExtra...)
	if err != nil {
		return nil, err
	}
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidEKCertificate})
	if err != nil {
		return nil, err
	}
	var ku x509.KeyUsage
	switch pub.(type) {
	case *rsa.PublicKey:
		ku = x509.KeyUsageKeyEncipherment
	case *ecdsa.PublicKey:
		ku = x509.KeyUsageKeyAgreement
	default:
		return nil, fmt.Errorf("EK public key of type %T", pub)
	}
	ca.serial++
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(ca.serial),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              ku,
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}},
	}
	if !p.OmitEKU {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Value: eku})
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate, pub, ca.interKey)
}
