package tpm

import (
	"bytes"
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// FuzzEventLog feeds Replay arbitrary logs: it must not panic, and what it
// accepts must replay to 24 SHA-256 values.
func FuzzEventLog(f *testing.F) {
	for _, evs := range [][]tpmtest.Event{nil, tpmtest.DefaultBoot().Events(),
		append([]tpmtest.Event{tpmtest.StartupLocality(3)}, tpmtest.DefaultBoot().Events()[1:]...)} {
		l, err := tpmtest.BuildLog(evs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(l.Bytes)
		f.Add(l.Bytes[:len(l.Bytes)/2])
	}
	f.Fuzz(func(t *testing.T, log []byte) {
		pcrs, err := Replay(log)
		if err != nil {
			return
		}
		if len(pcrs) != numPCRs {
			t.Fatalf("%d PCRs", len(pcrs))
		}
		for i, v := range pcrs {
			if len(v) != 32 {
				t.Fatalf("PCR %d: %d bytes", i, len(v))
			}
		}
	})
}

// FuzzQuote feeds the quote and signature parsers, and the signature check
// against a real AK, arbitrary bytes.
func FuzzQuote(f *testing.F) {
	fx := newFixture(f, tpmtest.Config{}, nil)
	key, err := checkAK(fx.att.akPubParsed(f), fx.ev.Blobs[BlobAKPublic])
	if err != nil {
		f.Fatal(err)
	}
	fx.sim.Close()
	f.Add(fx.ev.Blobs[BlobQuote], fx.ev.Blobs[BlobSignature])
	f.Add(fx.ev.Blobs[BlobQuote][:50], fx.ev.Blobs[BlobSignature][:10])
	f.Fuzz(func(t *testing.T, quote, sig []byte) {
		a, aerr := parseAttestation(quote)
		if aerr == nil {
			_, _ = parseQuoteInfo(a.attested)
		}
		s, err := parseSignature(sig)
		if err != nil {
			return
		}
		if s.verify(key.pub, quote) == nil && (aerr != nil || !bytes.Equal(quote, fx.ev.Blobs[BlobQuote])) {
			t.Fatalf("signature verified over other bytes %x", quote)
		}
	})
}

// FuzzIdentity feeds Challenge arbitrary identities, and Verify arbitrary
// identities and kept values next to valid evidence: no panic, and nothing
// but the real pair verifies.
func FuzzIdentity(f *testing.F) {
	fx := newFixture(f, tpmtest.Config{}, nil)
	fx.sim.Close()
	f.Add(fx.id, fx.keep)
	f.Add(fx.id[:100], fx.keep[:20])
	f.Add(challenge{[]byte{1}, []byte{2}}.encode(), []byte(nil))
	f.Fuzz(func(t *testing.T, id, keep []byte) {
		_, _, _ = fx.ver.Challenge(id)
		_, _ = decodeChallenge(id)
		if _, err := decodeIdentity(id); err != nil {
			return
		}
		in := fx.input()
		in.Identity, in.Kept = id, keep
		_, err := fx.ver.Verify(context.Background(), fx.evidence(), in)
		if err == nil && (!bytes.Equal(id, fx.id) || !bytes.Equal(keep, fx.keep)) {
			t.Fatal("verified with another identity or kept value")
		}
		if err != nil && attest.ClassOf(err) == "" {
			t.Fatal("error without a class")
		}
	})
}

// FuzzAKCanonical holds decodeAK's size check for ECC keys equal to the
// re-marshal round trip it replaces: for every input go-tpm parses as an
// ECC TPMT_PUBLIC, "exactly the canonical size" must agree with "re-encodes
// to the same bytes".
func FuzzAKCanonical(f *testing.F) {
	ak := akTemplate()
	f.Add(tpm2.Marshal(ak))
	withPolicy := akTemplate()
	withPolicy.AuthPolicy = tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{1}, 32)}
	f.Add(tpm2.Marshal(withPolicy))
	f.Add(append(tpm2.Marshal(ak), 0))
	f.Add(tpm2.Marshal(tpm2.ECCSRKTemplate))
	f.Add(tpm2.Marshal(tpm2.RSAEKTemplate))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := unmarshalOnly[tpm2.TPMTPublic]("fuzz", b)
		if err != nil {
			return
		}
		n, ok := eccPublicSize(pub)
		if !ok {
			return
		}
		var round []byte
		func() {
			defer func() { _ = recover() }() // go-tpm's marshaller on odd values
			round = tpm2.Marshal(*pub)
		}()
		if round == nil {
			return
		}
		if (n == len(b)) != bytes.Equal(round, b) {
			t.Fatalf("size check says %v (size %d, input %d), round trip says %v", n == len(b), n, len(b), bytes.Equal(round, b))
		}
	})
}
