package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// OIDs of EK certificates (TCG EK Credential Profile 2.0 §3.2.9, §3.2.16).
var (
	oidSAN           = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	// TPM manufacturer, model and version: the only attributes an EK
	// certificate's directoryName SAN may carry.
	tcgSANAttributes = []asn1.ObjectIdentifier{{2, 23, 133, 2, 1}, {2, 23, 133, 2, 2}, {2, 23, 133, 2, 3}}
)

// trimDER cuts an NV-read certificate to its outer SEQUENCE: NV indices are
// often larger than the certificate and padded.
func trimDER(b []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return nil, err
	}
	return b[:len(b)-len(rest)], nil
}

// checkTCGSAN accepts a subjectAltName that holds only directoryNames made of
// the TCG TPM attributes. EK certificates mark it critical because their
// subject is empty (RFC 5280 §4.2.1.6); Go's x509 leaves a SAN without DNS,
// e-mail, IP or URI names unhandled, so it is checked here instead.
func checkTCGSAN(value []byte) error {
	var names []asn1.RawValue
	rest, err := asn1.Unmarshal(value, &names)
	if err != nil || len(rest) != 0 {
		return errors.New("ek-cert: subjectAltName: not a SEQUENCE OF GeneralName")
	}
	if len(names) == 0 {
		return errors.New("ek-cert: subjectAltName: empty")
	}
	for i, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 || !n.IsCompound {
			return fmt.Errorf("ek-cert: subjectAltName[%d]: tag %d class %d, want a directoryName", i, n.Tag, n.Class)
		}
		var rdns pkix.RDNSequence
		rest, err := asn1.Unmarshal(n.Bytes, &rdns)
		if err != nil || len(rest) != 0 {
			return fmt.Errorf("ek-cert: subjectAltName[%d]: not a Name", i)
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				if !slices.ContainsFunc(tcgSANAttributes, atv.Type.Equal) {
					return fmt.Errorf("ek-cert: subjectAltName[%d]: attribute %v is not a TCG TPM attribute", i, atv.Type)
				}
			}
		}
	}
	return nil
}

// verifyEKCert checks that cert chains to roots (through intermediates) at
// now, for the tcg-kp-EKCertificate purpose. Its key type is checked where
// the credential is made (ekTemplateFor).
func verifyEKCert(cert *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) error {
	if roots == nil {
		return errors.New("ek-cert: no pinned EK roots configured")
	}
	if i := slices.IndexFunc(cert.UnhandledCriticalExtensions, oidSAN.Equal); i >= 0 {
		for _, ext := range cert.Extensions {
			if ext.Id.Equal(oidSAN) {
				if err := checkTCGSAN(ext.Value); err != nil {
					return err
				}
			}
		}
		cert.UnhandledCriticalExtensions = slices.Delete(slices.Clone(cert.UnhandledCriticalExtensions), i, i+1)
	}
	// ExtKeyUsageAny: Go knows no TCG EKU, so the chain is verified for any
	// use and the EK purpose checked below.
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates,
		CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("ek-cert: chain to pinned roots: %w", err)
	}
	if !slices.ContainsFunc(cert.UnknownExtKeyUsage, oidEKCertificate.Equal) {
		return errors.New("ek-cert: no tcg-kp-EKCertificate (2.23.133.8.1) extended key usage")
	}
	return nil
}

// ekTemplateFor returns the TPMT_PUBLIC of the EK that key belongs to: the
// default template (EK Credential Profile §B.3.3 L-1 RSA 2048, §B.3.4 L-2
// ECC P-256) with key as its unique field. Its symmetric parameters and
// nameAlg are what MakeCredential needs.
func ekTemplateFor(key crypto.PublicKey) (*tpm2.TPMTPublic, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 || k.E != 65537 {
			return nil, fmt.Errorf("ek-cert: RSA key of %d bits, exponent %d; want 2048, 65537", k.N.BitLen(), k.E)
		}
		t := tpm2.RSAEKTemplate
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, 256))})
		return &t, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ek-cert: ECC curve %s, want P-256", k.Curve.Params().Name)
		}
		raw, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("ek-cert: %w", err)
		}
		t := tpm2.ECCEKTemplate
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
		})
		return &t, nil
	}
	return nil, fmt.Errorf("ek-cert: public key of type %T, want RSA 2048 or ECC P-256", key)
}
