package tdx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/google/go-tdx-guest/abi"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// BenchmarkVerify is one full verification, collateral from an in-memory
// bundle (no network, no disk).
func BenchmarkVerify(b *testing.B) {
	f := fixture(b)
	bind := tdxtest.Binding(9)
	ev := evidence(b, f, bind)
	v := verifierFor(f)
	in := attest.Input{Binding: bind, Reference: f.Reference()}
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor times only the 15 ECDSA P-256 verifications a full
// verification performs:
//   - PCK chain to the pinned pool (ours): PCK←PCK CA, PCK CA←root (2)
//   - go-tdx-guest's chain profile: root self-signature, PCK CA←root,
//     PCK←PCK CA, then x509 Verify again: PCK←PCK CA, PCK CA←root (5)
//   - quote signature by the attestation key, QE report by the PCK (2)
//   - TCB signing certificate←root for TCB info and QE identity (2)
//   - TCB info and QE identity signatures (2)
//   - PCK CRL←PCK CA, root CA CRL←root (2)
func BenchmarkFloor(b *testing.B) {
	f := fixture(b)
	k := f.PKI
	q := evidence(b, f, tdxtest.Binding(9)).Blobs[tdx.BlobQuote]
	const sd = tdxtest.HeaderSize + tdxtest.BodySize + 4
	signed, sig, ak := q[:tdxtest.HeaderSize+tdxtest.BodySize], q[sd:sd+64], q[sd+64:sd+128]
	qe := q[sd+128+6 : sd+128+6+tdxtest.QEReportSize]
	qeSig := q[sd+128+6+tdxtest.QEReportSize : sd+128+6+tdxtest.QEReportSize+64]
	akPub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(ak[:32]), Y: new(big.Int).SetBytes(ak[32:])}
	tcbRaw, tcbSig := signedField(b, f.Bundle[tdx.TCBInfoFile(f.FMSPC())].Data, "tcbInfo")
	qeRaw, qeIDSig := signedField(b, f.Bundle[tdx.QEIdentityFile].Data, "enclaveIdentity")
	pckCRL := parseCRL(b, f.Bundle[tdx.PCKCRLFile("platform")].Data)
	rootCRL := parseCRL(b, f.Bundle[tdx.RootCACRLFile].Data)
	tcbPub := k.TCBSign.PublicKey.(*ecdsa.PublicKey)
	check := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	raw := func(pub *ecdsa.PublicKey, msg, s []byte) {
		h := sha256.Sum256(msg)
		der, err := abi.SignatureToDER(s)
		check(err)
		if !ecdsa.VerifyASN1(pub, h[:], der) {
			b.Fatal("signature does not verify")
		}
	}
	for b.Loop() {
		for range 3 {
			check(k.PCK.CheckSignatureFrom(k.PCKCA))
			check(k.PCKCA.CheckSignatureFrom(k.Root))
		}
		check(k.Root.CheckSignatureFrom(k.Root))
		raw(akPub, signed, sig)
		raw(k.PCK.PublicKey.(*ecdsa.PublicKey), qe, qeSig)
		for range 2 {
			check(k.TCBSign.CheckSignatureFrom(k.Root))
		}
		raw(tcbPub, tcbRaw, tcbSig)
		raw(tcbPub, qeRaw, qeIDSig)
		check(pckCRL.CheckSignatureFrom(k.PCKCA))
		check(rootCRL.CheckSignatureFrom(k.Root))
	}
}

func signedField(b *testing.B, body []byte, field string) (raw, sig []byte) {
	b.Helper()
	var doc map[string]json.RawMessage
	var s string
	if err := json.Unmarshal(body, &doc); err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(doc["signature"], &s); err != nil {
		b.Fatal(err)
	}
	sig, err := hex.DecodeString(s)
	if err != nil {
		b.Fatal(err)
	}
	return doc[field], sig
}

func parseCRL(b *testing.B, der []byte) *x509.RevocationList {
	b.Helper()
	c, err := x509.ParseRevocationList(der)
	if err != nil {
		b.Fatal(err)
	}
	return c
}
