package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// challengeUnchecked makes a credential for id the way Challenge does but
// without its checks, so that Verify's own checks can be shown to deny
// evidence an attacker obtained some other way.
func challengeUnchecked(t *testing.T, id []byte) (send, keep []byte) {
	t.Helper()
	ident, err := decodeIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(ident.ekCert)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(ident.akPublic)
	name := append(binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256)), d[:]...)
	send, keep, err = makeCredential(rand.Reader, cert, name, id)
	if err != nil {
		t.Fatal(err)
	}
	return send, keep
}

// withEKCert answers a challenge for an identity that names cert instead of
// the TPM's own certificate; the credential is encrypted to cert's key,
// which is the TPM's EK, so the TPM can activate it.
func withEKCert(t *testing.T, f *fixture, cert []byte) (*attest.Evidence, attest.Input) {
	t.Helper()
	ident, _ := decodeIdentity(f.id)
	id := identity{cert, ident.akPublic}.encode()
	send, keep := challengeUnchecked(t, id)
	ev, err := f.att.Attest(context.Background(), send, f.binding)
	if err != nil {
		t.Fatal(err)
	}
	ev.Blobs[BlobEKCert] = cert
	return ev, attest.Input{Binding: f.binding, Identity: id, Kept: keep, Reference: f.ref}
}

func ekKey(t *testing.T, f *fixture) any {
	t.Helper()
	c, err := x509.ParseCertificate(f.sim.EKCert)
	if err != nil {
		t.Fatal(err)
	}
	return c.PublicKey
}

// signWithAK has the AK sign data that does not start with
// TPM_GENERATED_VALUE: TPM2_Hash gives a ticket for such data, and a
// restricted key signs it (Part 1 §25.3).
func signWithAK(t *testing.T, f *fixture, data []byte) []byte {
	t.Helper()
	tp := transport.FromReadWriter(f.sim.RW)
	h, err := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: data}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHEndorsement}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tpm2.Sign{KeyHandle: f.att.ak, Digest: h.OutHash, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, Validation: h.Validation}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(s.Signature)
}

func TestDeny(t *testing.T) {
	base := newFixture(t, tpmtest.Config{}, nil)
	if _, err := base.verify(base.evidence(), base.input()); err != nil {
		t.Fatalf("base evidence does not verify: %v", err)
	}

	t.Run("tampered-event-log", func(t *testing.T) {
		log := base.ev.Blobs[BlobEventLog]
		t.Run("digest-flipped", func(t *testing.T) {
			ev := base.evidence()
			var d []byte
			for _, e := range base.sim.Log.Events {
				if e.PCR == 4 && e.Type == tpmtest.EvEFIBootServicesApplication {
					d = e.SHA256
					break
				}
			}
			i := bytes.Index(ev.Blobs[BlobEventLog], d)
			if d == nil || i < 0 {
				t.Fatal("PCR4 application digest not found in the log")
			}
			ev.Blobs[BlobEventLog][i] ^= 1
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMeasurement)
		})
		t.Run("truncated", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs[BlobEventLog] = ev.Blobs[BlobEventLog][:len(log)-7]
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("header", func(t *testing.T) {
			ev := base.evidence()
			i := bytes.Index(ev.Blobs[BlobEventLog], []byte("Spec ID"))
			ev.Blobs[BlobEventLog][i] = 'X'
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("event-dropped", func(t *testing.T) {
			l, err := tpmtest.BuildLog(base.sim.Log.Events[:len(base.sim.Log.Events)-1])
			if err != nil {
				t.Fatal(err)
			}
			ev := base.evidence()
			ev.Blobs[BlobEventLog] = l.Bytes
			_, err = base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMeasurement)
		})
		t.Run("every-byte", func(t *testing.T) {
			// No flip may panic or verify into a different class; flips of
			// event data (never extended, never trusted) may verify.
			denied := 0
			for i := range log {
				ev := base.evidence()
				ev.Blobs[BlobEventLog][i] ^= 0xA5
				_, err := base.verify(ev, base.input())
				if c := attest.ClassOf(err); c != "" && c != attest.ClassMalformed && c != attest.ClassMeasurement {
					t.Fatalf("flip at %d: class %q: %v", i, c, err)
				}
				if err != nil {
					denied++
				}
			}
			if denied == 0 {
				t.Fatal("no flip was denied")
			}
		})
	})

	t.Run("ek-not-pinned-vendor", func(t *testing.T) {
		other, err := tpmtest.NewCA("Other TPM Vendor")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := other.IssueEK(ekKey(t, base))
		if err != nil {
			t.Fatal(err)
		}
		ev, in := withEKCert(t, base, cert)
		if _, _, err := base.ver.Challenge(in.Identity); attest.ClassOf(err) != attest.ClassChain {
			t.Fatalf("Challenge: %v, want a chain denial", err)
		}
		_, err = base.verify(ev, in)
		wantDeny(t, err, attest.ClassChain)
		// Nor does the other vendor's intermediate help, pinned as one.
		v := *base.ver
		v.Intermediates = other.Intermediates()
		_, err = v.Verify(context.Background(), ev, in)
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("ek-without-eku", func(t *testing.T) {
		cert, err := base.sim.CA.IssueEKProfile(ekKey(t, base), tpmtest.EKProfile{OmitEKU: true})
		if err != nil {
			t.Fatal(err)
		}
		ev, in := withEKCert(t, base, cert)
		_, err = base.verify(ev, in)
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("ek-san-foreign-attribute", func(t *testing.T) {
		cert, err := base.sim.CA.IssueEKProfile(ekKey(t, base), tpmtest.EKProfile{
			SANExtra: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "victim.example"}}})
		if err != nil {
			t.Fatal(err)
		}
		ev, in := withEKCert(t, base, cert)
		_, err = base.verify(ev, in)
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("ek-cert-expired", func(t *testing.T) {
		v := *base.ver
		v.Now = func() time.Time { return time.Now().Add(50 * 365 * 24 * time.Hour) }
		_, err := v.Verify(context.Background(), base.evidence(), base.input())
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("ek-cert-swap", func(t *testing.T) {
		// Another genuine EK certificate in the evidence, while the
		// challenge was for this TPM's: the hardware ID would be another's.
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert, err := base.sim.CA.IssueEK(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		ev := base.evidence()
		ev.Blobs[BlobEKCert] = cert
		_, err = base.verify(ev, base.input())
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("identity-swap", func(t *testing.T) {
		// Evidence and announced identity agree on another EK certificate,
		// but the credential was made for this TPM's identity.
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert, err := base.sim.CA.IssueEK(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		ident, _ := decodeIdentity(base.id)
		in := base.input()
		in.Identity = identity{cert, ident.akPublic}.encode()
		ev := base.evidence()
		ev.Blobs[BlobEKCert] = cert
		_, err = base.verify(ev, in)
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("ak-not-activated", func(t *testing.T) {
		ev := base.evidence()
		ev.Blobs[BlobActivation] = bytes.Repeat([]byte{0x42}, secretSize)
		_, err := base.verify(ev, base.input())
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("forged-quote-signature", func(t *testing.T) {
		t.Run("bit-flip", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs[BlobSignature][len(ev.Blobs[BlobSignature])-1] ^= 1
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassChain)
		})
		t.Run("software-key", func(t *testing.T) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			d := sha256.Sum256(base.ev.Blobs[BlobQuote])
			r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
			if err != nil {
				t.Fatal(err)
			}
			ev := base.evidence()
			ev.Blobs[BlobSignature] = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA,
				Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256,
					SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))},
					SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))}})})
			_, err = base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassChain)
		})
	})

	t.Run("quote-not-tpm-generated", func(t *testing.T) {
		// The AK signs a copy of the quote without the magic: a valid AK
		// signature over bytes the TPM did not produce.
		ev := base.evidence()
		q := ev.Blobs[BlobQuote]
		q[0] = 0x00
		ev.Blobs[BlobSignature] = signWithAK(t, base, q)
		_, err := base.verify(ev, base.input())
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("quote-wrong-type", func(t *testing.T) {
		// TPM2_Certify of the AK by itself: TPM-generated, AK-signed, the
		// right qualifying data, but no PCRs.
		qd := base.binding.SHA256()
		c, err := tpm2.Certify{ObjectHandle: base.att.ak, SignHandle: base.att.ak,
			QualifyingData: tpm2.TPM2BData{Buffer: qd[:]}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}}.Execute(transport.FromReadWriter(base.sim.RW))
		if err != nil {
			t.Fatal(err)
		}
		ev := base.evidence()
		ev.Blobs[BlobQuote] = c.CertifyInfo.Bytes()
		ev.Blobs[BlobSignature] = tpm2.Marshal(c.Signature)
		_, err = base.verify(ev, base.input())
		wantDeny(t, err, attest.ClassChain)
	})

	t.Run("wrong-pcr", func(t *testing.T) {
		in := base.input()
		ref := *in.Reference
		ref.TPM = &attest.TPMReference{PCRs: maps.Clone(ref.TPM.PCRs)}
		pcr4 := bytes.Clone(ref.TPM.PCRs[4])
		pcr4[0] ^= 1
		ref.TPM.PCRs[4] = pcr4
		in.Reference = &ref
		_, err := base.verify(base.evidence(), in)
		wantDeny(t, err, attest.ClassMeasurement)
	})

	t.Run("binding-mismatch", func(t *testing.T) {
		for name, b := range map[string]attest.Binding{
			"nonce":   testBinding(9),
			"cluster": func() attest.Binding { b := testBinding(1); b.ClusterID = "other-cluster"; return b }(),
			"role":    func() attest.Binding { b := testBinding(1); b.Role = attest.RoleKeyd; return b }(),
		} {
			t.Run(name, func(t *testing.T) {
				in := base.input()
				in.Binding = b
				_, err := base.verify(base.evidence(), in)
				wantDeny(t, err, attest.ClassBinding)
			})
		}
	})

	t.Run("truncated-evidence", func(t *testing.T) {
		for _, name := range blobNames {
			t.Run("missing-"+name, func(t *testing.T) {
				ev := base.evidence()
				delete(ev.Blobs, name)
				_, err := base.verify(ev, base.input())
				wantDeny(t, err, attest.ClassMalformed)
			})
		}
		for name, n := range map[string]int{BlobEKCert: 1, BlobAKPublic: 1, BlobQuote: 60, BlobSignature: 1, BlobPCRs: 1} {
			t.Run("short-"+name, func(t *testing.T) {
				ev := base.evidence()
				ev.Blobs[name] = ev.Blobs[name][:len(ev.Blobs[name])-n]
				_, err := base.verify(ev, base.input())
				wantDeny(t, err, attest.ClassMalformed)
			})
		}
		t.Run("short-identity", func(t *testing.T) {
			in := base.input()
			in.Identity = in.Identity[:len(in.Identity)-1]
			_, err := base.verify(base.evidence(), in)
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("nil", func(t *testing.T) {
			_, err := base.verify(nil, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
	})

	t.Run("wrong-platform", func(t *testing.T) {
		ev := base.evidence()
		ev.Platform = attest.PlatformSNP
		_, err := base.verify(ev, base.input())
		wantDeny(t, err, attest.ClassMalformed)
	})

	t.Run("oversized-evidence", func(t *testing.T) {
		t.Run("blob", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs[BlobEventLog] = append(ev.Blobs[BlobEventLog], make([]byte, attest.MaxBlobSize)...)
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("blob-count", func(t *testing.T) {
			ev := base.evidence()
			for i := range attest.MaxBlobs {
				ev.Blobs[strings.Repeat("x", i+1)] = []byte{1}
			}
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("unknown-blob", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs["extra"] = []byte("smuggled")
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("quote-trailing", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs[BlobQuote] = append(ev.Blobs[BlobQuote], 0)
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassChain) // signed bytes changed first
		})
		t.Run("pcrs-extra", func(t *testing.T) {
			ev := base.evidence()
			ev.Blobs[BlobPCRs] = append(ev.Blobs[BlobPCRs], make([]byte, 32)...)
			_, err := base.verify(ev, base.input())
			wantDeny(t, err, attest.ClassMalformed)
		})
		t.Run("identity", func(t *testing.T) {
			ident, _ := decodeIdentity(base.id)
			in := base.input()
			in.Identity = identity{append(bytes.Clone(ident.ekCert), make([]byte, maxCertSize)...), ident.akPublic}.encode()
			_, err := base.verify(base.evidence(), in)
			wantDeny(t, err, attest.ClassMalformed)
		})
	})

	// The subtests below run simulators of their own; only one runs at a time.
	base.sim.Close()

	t.Run("hash-bank-downgrade", func(t *testing.T) {
		f := newFixture(t, tpmtest.Config{}, func(a *Attester) { a.bank = tpm2.TPMAlgSHA1 })
		_, err := f.verify(f.evidence(), f.input())
		wantDeny(t, err, attest.ClassPolicy)
	})

	t.Run("pcr-reset", func(t *testing.T) {
		f := newFixture(t, tpmtest.Config{}, nil)
		// PCR 14 is quoted but in no reference: only the replay sees it.
		if err := f.sim.Extend(14, []byte("measured outside the log")); err != nil {
			t.Fatal(err)
		}
		ev, err := f.att.Attest(context.Background(), f.send, f.binding)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.verify(ev, f.input())
		wantDeny(t, err, attest.ClassMeasurement)
	})

	t.Run("reference-pcr-not-quoted", func(t *testing.T) {
		f := newFixture(t, tpmtest.Config{}, func(a *Attester) { a.opts.PCRs = []int{0, 1, 2, 3, 4, 5, 6, 7} })
		_, err := f.verify(f.evidence(), f.input())
		wantDeny(t, err, attest.ClassPolicy)
	})

	t.Run("pcrs-not-quoted", func(t *testing.T) {
		// A TPM that booted another kernel sends the good boot's log and
		// PCR values next to its honest quote.
		evil := tpmtest.DefaultBoot()
		bad := sha256.Sum256([]byte("evil kernel"))
		evil.Apps[1] = bad[:]
		f := newFixture(t, tpmtest.Config{Events: evil.Events()}, nil)
		good, err := tpmtest.BuildLog(tpmtest.DefaultBoot().Events())
		if err != nil {
			t.Fatal(err)
		}
		in := f.input()
		in.Reference = good.Reference("test-profile", tpmtest.ReferencePCRs...)
		ev := f.evidence()
		ev.Blobs[BlobEventLog] = good.Bytes
		var values []byte
		for _, i := range DefaultPCRs {
			values = append(values, good.PCRs[i]...)
		}
		ev.Blobs[BlobPCRs] = values
		_, err = f.verify(ev, in)
		wantDeny(t, err, attest.ClassMeasurement)
	})

	t.Run("ak-attributes", func(t *testing.T) {
		for name, mod := range map[string]func(*tpm2.TPMAObject){
			"not-restricted": func(a *tpm2.TPMAObject) { a.Restricted = false },
			"duplicable":     func(a *tpm2.TPMAObject) { a.FixedTPM = false; a.FixedParent = false },
		} {
			t.Run(name, func(t *testing.T) {
				sim := tpmtest.Start(t, tpmtest.Config{CA: base.sim.CA})
				att, err := NewAttester(sim.RW, Options{EventLogPath: sim.LogPath})
				if err != nil {
					t.Fatal(err)
				}
				mod(&att.akTmpl.ObjectAttributes)
				id, err := att.Identity(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := base.ver.Challenge(id); attest.ClassOf(err) != attest.ClassChain {
					t.Fatalf("Challenge: %v, want a chain denial", err)
				}
				send, keep := challengeUnchecked(t, id)
				ev, err := att.Attest(context.Background(), send, base.binding)
				if err != nil {
					t.Fatal(err)
				}
				_, err = base.verify(ev, attest.Input{Binding: base.binding, Identity: id, Kept: keep, Reference: sim.Reference("test-profile")})
				wantDeny(t, err, attest.ClassChain)
			})
		}
	})
}
