package tdx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
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

// BenchmarkFloor times only the 9 ECDSA P-256 verifications a verification
// performs per quote once the collateral's signatures are cached (sigCache:
// the TCB signing certificate, TCB info, QE identity and both CRLs are
// verified once per exact bytes, not per quote):
//   - PCK chain to the pinned pool (ours): PCK←PCK CA, PCK CA←root (2)
//   - go-tdx-guest's chain profile: root self-signature, PCK CA←root,
//     PCK←PCK CA, then x509 Verify again: PCK←PCK CA, PCK CA←root (5)
//   - quote signature by the attestation key, QE report by the PCK (2)
func BenchmarkFloor(b *testing.B) {
	f := fixture(b)
	k := f.PKI
	q := evidence(b, f, tdxtest.Binding(9)).Blobs[tdx.BlobQuote]
	const sd = tdxtest.HeaderSize + tdxtest.BodySize + 4
	signed, sig, ak := q[:tdxtest.HeaderSize+tdxtest.BodySize], q[sd:sd+64], q[sd+64:sd+128]
	qe := q[sd+128+6 : sd+128+6+tdxtest.QEReportSize]
	qeSig := q[sd+128+6+tdxtest.QEReportSize : sd+128+6+tdxtest.QEReportSize+64]
	akPub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(ak[:32]), Y: new(big.Int).SetBytes(ak[32:])}
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
	}
}
