package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-cc/palisade/internal/attest"
)

// softAK is akTemplate with a software key's point, as a TPM would return it.
func softAK(t *testing.T) tpm2.TPMTPublic {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := k.PublicKey.Bytes()
	p := akTemplate()
	p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})
	return p
}

// TestCheckAK flips each property checkAK requires, one at a time.
func TestCheckAK(t *testing.T) {
	good := softAK(t)
	if _, err := checkAK(&good, tpm2.Marshal(good)); err != nil {
		t.Fatalf("good AK: %v", err)
	}
	eccParms := func(mod func(*tpm2.TPMSECCParms)) func(*tpm2.TPMTPublic) {
		return func(p *tpm2.TPMTPublic) {
			e, _ := p.Parameters.ECCDetail()
			c := *e
			mod(&c)
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
		}
	}
	for name, mod := range map[string]func(*tpm2.TPMTPublic){
		"not-restricted":     func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false },
		"not-sign":           func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false },
		"decrypt":            func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true },
		"not-fixedTPM":       func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false },
		"not-fixedParent":    func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false },
		"not-sensitive-orig": func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false },
		"nameAlg-sha1":       func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 },
		"curve-p384":         eccParms(func(c *tpm2.TPMSECCParms) { c.CurveID = tpm2.TPMECCNistP384 }),
		"scheme-ecdaa": eccParms(func(c *tpm2.TPMSECCParms) {
			c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDAA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDAA, &tpm2.TPMSSchemeECDAA{HashAlg: tpm2.TPMAlgSHA256})}
		}),
		"scheme-sha1": eccParms(func(c *tpm2.TPMSECCParms) {
			c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA1})}
		}),
		"point-off-curve": func(p *tpm2.TPMTPublic) {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := softAK(t)
			mod(&p)
			if _, err := checkAK(&p, tpm2.Marshal(p)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestVerifyInput checks that a verifier misused by its caller fails as
// internal, not as a judgement of the evidence.
func TestVerifyInput(t *testing.T) {
	good := testBinding(1)
	ref := &attest.Reference{Profile: "p", Platform: attest.PlatformTPM,
		TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{0: make([]byte, 32)}}}
	snp := &attest.Reference{Profile: "p", Platform: attest.PlatformSNP,
		SNP: &attest.SNPReference{Product: "Milan", Measurement: make([]byte, 48)}}
	pinned := &Verifier{Roots: x509.NewCertPool()}
	for name, c := range map[string]struct {
		v  *Verifier
		in attest.Input
	}{
		"no-roots":       {&Verifier{}, attest.Input{Binding: good, Reference: ref}},
		"no-reference":   {pinned, attest.Input{Binding: good}},
		"snp-reference":  {pinned, attest.Input{Binding: good, Reference: snp}},
		"bad-binding":    {pinned, attest.Input{Binding: attest.Binding{Role: attest.RoleNode}, Reference: ref}},
		"empty-tpm-pcrs": {pinned, attest.Input{Binding: good, Reference: &attest.Reference{Profile: "p", Platform: attest.PlatformTPM, TPM: &attest.TPMReference{}}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.v.Verify(context.Background(), &attest.Evidence{Platform: attest.PlatformTPM}, c.in)
			if attest.ClassOf(err) != attest.ClassInternal {
				t.Fatalf("%v, want internal", err)
			}
		})
	}
}
