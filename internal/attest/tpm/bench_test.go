package tpm

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// BenchmarkVerify is the verifier's work for one attestation of a node it
// has not seen: Challenge (EK chain, AK checks, MakeCredential to the ECC
// EK) and Verify, with a fresh cache per iteration so that only the
// Challenge→Verify reuse of one admission counts. Evidence is made once,
// outside the loop; nothing touches the network.
func BenchmarkVerify(b *testing.B) {
	f := newFixture(b, tpmtest.Config{}, nil)
	f.sim.Close()
	in := f.input()
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		v := *f.ver
		v.Cache = NewCache(1)
		if _, _, err := v.Challenge(f.id); err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, f.ev, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor is only the signature verifications a full verification
// performs: the AK's quote signature and the EK chain's two certificate
// signatures.
func BenchmarkFloor(b *testing.B) {
	f := newFixture(b, tpmtest.Config{}, nil)
	f.sim.Close()
	p, err := decodeAK(f.ev.Blobs[BlobAKPublic])
	if err != nil {
		b.Fatal(err)
	}
	key, err := checkAK(p, f.ev.Blobs[BlobAKPublic])
	if err != nil {
		b.Fatal(err)
	}
	sig, err := parseSignature(f.ev.Blobs[BlobSignature])
	if err != nil {
		b.Fatal(err)
	}
	ek, err := x509.ParseCertificate(f.ev.Blobs[BlobEKCert])
	if err != nil {
		b.Fatal(err)
	}
	quote := f.ev.Blobs[BlobQuote]
	inter, root := f.sim.CA.Intermediate, f.sim.CA.Root
	b.ResetTimer()
	for b.Loop() {
		if err := sig.verify(key.pub, quote); err != nil {
			b.Fatal(err)
		}
		if err := ek.CheckSignatureFrom(inter); err != nil {
			b.Fatal(err)
		}
		if err := inter.CheckSignatureFrom(root); err != nil {
			b.Fatal(err)
		}
	}
}
