package tdx_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"testing"
	"testing/fstest"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// denyCase is one attack: it starts from the valid fixture, changes one
// thing and says which class must deny it.
type denyCase struct {
	// mutate returns the (changed) fixture, verifier, evidence and input.
	mutate func(t *testing.T, c *scene)
	class  attest.Class
}

// scene is everything one verification uses.
type scene struct {
	f  *tdxtest.Fixture
	v  *tdx.Verifier
	b  attest.Binding
	in attest.Input
	ev *attest.Evidence
}

// baseline returns a scene whose evidence verifies. Its reference accepts
// any TEE_TCB_SVN, so TCB-status denials are not masked by the minimum.
func baseline(t *testing.T) *scene {
	t.Helper()
	f := *fixture(t)
	ref := f.Reference()
	ref.TDX.MinTEETCBSVN = make(attest.HexBytes, 16)
	b := tdxtest.Binding(7)
	c := &scene{f: &f, v: verifierFor(&f), b: b, in: attest.Input{Binding: b, Reference: ref}}
	c.ev = evidence(t, c.f, b)
	if _, err := c.v.Verify(context.Background(), c.ev, c.in); err != nil {
		t.Fatalf("baseline does not verify: %v", err)
	}
	return c
}

// withBody re-signs evidence with a changed quote body.
func (c *scene) withBody(t *testing.T, change func(*tdxtest.Body)) {
	t.Helper()
	change(&c.f.Body)
	c.ev = evidence(t, c.f, c.b)
}

// withSigner re-signs evidence with a changed quoting enclave.
func (c *scene) withSigner(t *testing.T, change func(*tdxtest.Signer)) {
	t.Helper()
	s := *c.f.Signer
	change(&s)
	c.f.Signer = &s
	c.ev = evidence(t, c.f, c.b)
}

// withCollateral replaces the bundle.
func (c *scene) withCollateral(t *testing.T, col tdxtest.Collateral) {
	t.Helper()
	files, err := col.Files(c.f.PKI)
	if err != nil {
		t.Fatal(err)
	}
	c.v.Getter = &tdx.Bundle{FS: files}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func otherPKI(t *testing.T) *tdxtest.PKI {
	t.Helper()
	k, err := tdxtest.NewPKI(tdxtest.DefaultPlatform)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func denyCases() map[string]denyCase {
	return map[string]denyCase{
		// The evidence carries a complete chain under an attacker's root
		// with Intel's names; collateral is the genuine one.
		"root-from-evidence": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			evil := otherPKI(t)
			c.withSigner(t, func(s *tdxtest.Signer) { s.PKI = evil })
		}},
		// The pinned root appears in the chain, but the PCK CA under it was
		// made by the attacker (same names, own key).
		"forged-chain/pck-ca-not-from-pinned-root": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			evil := otherPKI(t)
			c.withSigner(t, func(s *tdxtest.Signer) {
				s.PKI = evil
				s.Chain = tdxtest.PEM(evil.PCK, evil.PCKCA, c.f.PKI.Root)
			})
		}},
		// The quote is signed by a key the QE report does not commit to.
		"forged-chain/attestation-key-not-certified": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			k := newKey(t)
			c.withSigner(t, func(s *tdxtest.Signer) { s.CertifiedKey = &k.PublicKey })
		}},
		// The QE report is signed by a key other than the PCK key.
		"forged-chain/qe-report-not-signed-by-pck": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			k := newKey(t)
			c.withSigner(t, func(s *tdxtest.Signer) { s.PCKKey = k })
		}},
		// The quote body was changed after signing.
		"forged-chain/body-changed-after-signing": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			q := append([]byte(nil), c.ev.Blobs[tdx.BlobQuote]...)
			q[tdxtest.HeaderSize+0x88] ^= 1 // MRTD[0]
			c.ev.Blobs[tdx.BlobQuote] = q
		}},
		// TCB info signed by a key that is not certified by a pinned root.
		"forged-chain/collateral-signer-not-pinned": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			evil := otherPKI(t)
			c.withCollateral(t, tdxtest.Collateral{SignKey: evil.TCBSignKey, SignCert: tdxtest.PEM(evil.TCBSign)})
		}},
		// TCB info changed after signing (an OutOfDate level relabelled).
		"forged-chain/collateral-changed-after-signing": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			files, err := tdxtest.Collateral{}.Files(c.f.PKI)
			if err != nil {
				t.Fatal(err)
			}
			name := tdx.TCBInfoFile(c.f.FMSPC())
			files[name].Data = bytes.Replace(files[name].Data, []byte(`"OutOfDate"`), []byte(`"UpToDate"`), 1)
			c.v.Getter = &tdx.Bundle{FS: files}
			c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = tdxtest.OutOfDateSVN })
		}},
		// A PCK CRL that hides a revocation, signed by someone other than
		// the PCK CA.
		"forged-chain/pck-crl-not-signed-by-pck-ca": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			files, err := tdxtest.Collateral{RevokedPCK: []*big.Int{c.f.PKI.PCK.SerialNumber}}.Files(c.f.PKI)
			if err != nil {
				t.Fatal(err)
			}
			evil := otherPKI(t)
			crl, err := tdxtest.CRL(evil.PCKCA, evil.PCKCAKey, tdxtest.Epoch.AddDate(0, 0, -1), tdxtest.Epoch.AddDate(0, 0, 1))
			if err != nil {
				t.Fatal(err)
			}
			files[tdx.PCKCRLFile("platform")].Data = crl
			c.v.Getter = &tdx.Bundle{FS: files}
		}},
		"revoked-pck": {class: attest.ClassRevoked, mutate: func(t *testing.T, c *scene) {
			c.withCollateral(t, tdxtest.Collateral{RevokedPCK: []*big.Int{c.f.PKI.PCK.SerialNumber}})
		}},
		"revoked-pck-ca": {class: attest.ClassRevoked, mutate: func(t *testing.T, c *scene) {
			c.withCollateral(t, tdxtest.Collateral{RevokedByRoot: []*big.Int{c.f.PKI.PCKCA.SerialNumber}})
		}},
		"revoked-tcb-signer": {class: attest.ClassRevoked, mutate: func(t *testing.T, c *scene) {
			c.withCollateral(t, tdxtest.Collateral{RevokedByRoot: []*big.Int{c.f.PKI.TCBSign.SerialNumber}})
		}},
		"expired-collateral": {class: attest.ClassCollateral, mutate: func(t *testing.T, c *scene) {
			c.withCollateral(t, tdxtest.Collateral{TCBInfoNextUpdate: tdxtest.Epoch.Add(-1)})
		}},
		"collateral-not-yet-valid": {class: attest.ClassCollateral, mutate: func(t *testing.T, c *scene) {
			c.withCollateral(t, tdxtest.Collateral{IssueDate: tdxtest.Epoch.Add(1)})
		}},
		"collateral-missing": {class: attest.ClassCollateral, mutate: func(t *testing.T, c *scene) {
			c.v.Getter = &tdx.Bundle{FS: fstest.MapFS{}}
		}},
		"collateral-other-fmspc": {class: attest.ClassCollateral, mutate: func(t *testing.T, c *scene) {
			files, err := tdxtest.Collateral{FMSPC: "00906ed50000"}.Files(c.f.PKI)
			if err != nil {
				t.Fatal(err)
			}
			// Serve the other FMSPC's TCB info under this FMSPC's name.
			files[tdx.TCBInfoFile(c.f.FMSPC())] = files[tdx.TCBInfoFile("00906ed50000")]
			files[tdx.TCBInfoChainFile(c.f.FMSPC())] = files[tdx.TCBInfoChainFile("00906ed50000")]
			c.v.Getter = &tdx.Bundle{FS: files}
		}},
		"tcb-out-of-date": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = tdxtest.OutOfDateSVN })
		}},
		"tcb-revoked": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = tdxtest.RevokedSVN })
		}},
		"tcb-sw-hardening-not-configured": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = tdxtest.SWHardeningSVN })
		}},
		"tcb-below-every-level": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = [16]byte{} })
		}},
		"tcb-module-signer": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MRSignerSEAM[0] = 1 })
		}},
		"qe-tcb-out-of-date": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.withSigner(t, func(s *tdxtest.Signer) { s.QE.ISVSVN = 3 })
		}},
		"qe-not-intel": {class: attest.ClassChain, mutate: func(t *testing.T, c *scene) {
			c.withSigner(t, func(s *tdxtest.Signer) { s.QE.MRSigner[0] ^= 1 })
		}},
		"tee-tcb-svn-below-minimum": {class: attest.ClassTCB, mutate: func(t *testing.T, c *scene) {
			c.in.Reference.TDX.MinTEETCBSVN = attest.HexBytes{6, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		}},
		// DEBUG set, and the reference even lists it: still denied.
		"td-debug": {class: attest.ClassPolicy, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TDAttributes[0] |= 1 })
			c.in.Reference.TDX.TDAttributes = attest.HexBytes(c.f.Body.TDAttributes[:])
		}},
		// SEPT_VE_DISABLE cleared; the pinned attributes follow, only
		// SeptVEDisable still says it must be set.
		"sept-ve": {class: attest.ClassPolicy, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TDAttributes[3] &^= 0x10 })
			c.in.Reference.TDX.TDAttributes = attest.HexBytes(c.f.Body.TDAttributes[:])
		}},
		"td-attributes": {class: attest.ClassPolicy, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.TDAttributes[7] |= 0x40 }) // PERFMON
		}},
		"wrong-xfam": {class: attest.ClassPolicy, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.XFAM[2] |= 0x08 })
		}},
		"wrong-mrtd": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MRTD[5] ^= 0xff })
		}},
		"wrong-mrseam": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MRSEAM[0] ^= 0xff })
		}},
		"wrong-mrconfigid": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MRConfigID[0] = 1 })
		}},
		"wrong-mrowner": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MROwner[47] = 1 })
		}},
		"wrong-mrownerconfig": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			c.withBody(t, func(b *tdxtest.Body) { b.MROwnerConfig[0] = 1 })
		}},
		// Another boot: the log and the quote agree, the reference does not.
		"wrong-rtmr": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			l := tdxtest.DefaultEventLog()
			l.Measure(3, tdxtest.EvIPL, []byte("init=/bin/sh"))
			c.f.Log = l
			c.withBody(t, func(b *tdxtest.Body) { b.RTMR = l.RTMR() })
		}},
		// The log claims a different UKI digest than was extended.
		"tampered-event-log": {class: attest.ClassMeasurement, mutate: func(t *testing.T, c *scene) {
			log := append([]byte(nil), c.ev.Blobs[tdx.BlobCCEL]...)
			i := indexOf(t, log, []byte("palisade.efi authenticode")) - 4 - 48 // digest of that event
			log[i] ^= 1
			c.ev.Blobs[tdx.BlobCCEL] = log
		}},
		"tampered-event-log/corrupted": {class: attest.ClassMalformed, mutate: func(t *testing.T, c *scene) {
			log := append([]byte(nil), c.ev.Blobs[tdx.BlobCCEL]...)
			i := indexOf(t, log, []byte("palisade.efi authenticode")) - 4 // event size
			log[i+3] = 0x7f
			c.ev.Blobs[tdx.BlobCCEL] = log
		}},
		"binding-mismatch": {class: attest.ClassBinding, mutate: func(t *testing.T, c *scene) {
			c.in.Binding = tdxtest.Binding(8)
		}},
		"truncated-quote": {class: attest.ClassMalformed, mutate: func(t *testing.T, c *scene) {
			q := c.ev.Blobs[tdx.BlobQuote]
			c.ev.Blobs[tdx.BlobQuote] = q[:len(q)-100]
		}},
		"oversized-evidence": {class: attest.ClassMalformed, mutate: func(t *testing.T, c *scene) {
			// A log that replays correctly, padded one byte past the bound.
			c.ev.Blobs[tdx.BlobCCEL] = c.f.Log.Bytes(attest.MaxBlobSize + 1 - len(c.f.Log.Bytes(0)))
		}},
		"unknown-blob": {class: attest.ClassMalformed, mutate: func(t *testing.T, c *scene) {
			c.ev.Blobs["vtpm"] = []byte{1}
		}},
		"quote-trailing-bytes": {class: attest.ClassMalformed, mutate: func(t *testing.T, c *scene) {
			c.ev.Blobs[tdx.BlobQuote] = append(append([]byte(nil), c.ev.Blobs[tdx.BlobQuote]...), 1)
		}},
	}
}

func indexOf(t *testing.T, b, sub []byte) int {
	t.Helper()
	for i := 0; i+len(sub) <= len(b); i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return i
		}
	}
	t.Fatalf("%q not in log", sub)
	return -1
}

func TestDeny(t *testing.T) {
	for name, dc := range denyCases() {
		t.Run(name, func(t *testing.T) {
			c := baseline(t)
			dc.mutate(t, c)
			_, err := c.v.Verify(context.Background(), c.ev, c.in)
			if err == nil {
				t.Fatalf("Verify accepted the attack")
			}
			t.Logf("denied: %v", err)
			if got := attest.ClassOf(err); got != dc.class {
				t.Errorf("class %q, want %q (%v)", got, dc.class, err)
			}
		})
	}
}

// A quote truncated anywhere, or a log corrupted anywhere, is denied without
// a panic.
func TestDenyTruncatedEverywhere(t *testing.T) {
	c := baseline(t)
	q := c.ev.Blobs[tdx.BlobQuote]
	for n := 0; n < len(q); n += 7 {
		ev := &attest.Evidence{Platform: attest.PlatformTDX, Blobs: map[string][]byte{
			tdx.BlobQuote: q[:n], tdx.BlobCCEL: c.ev.Blobs[tdx.BlobCCEL]}}
		if _, err := c.v.Verify(context.Background(), ev, c.in); err == nil {
			t.Fatalf("quote truncated to %d bytes verified", n)
		}
	}
	log := c.ev.Blobs[tdx.BlobCCEL]
	for n := 0; n < len(log)-64; n += 3 {
		if _, err := tdx.Replay(log[:n]); err == nil && n < 100 {
			t.Errorf("log truncated to %d bytes replayed", n)
		}
	}
}

func TestAcceptConfiguredTCBStatus(t *testing.T) {
	c := baseline(t)
	c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = tdxtest.SWHardeningSVN })
	c.v.AcceptTCB = []string{"SWHardeningNeeded"}
	got, err := c.v.Verify(context.Background(), c.ev, c.in)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.TCB != "SWHardeningNeeded" {
		t.Errorf("TCB %q, want SWHardeningNeeded", got.TCB)
	}
	// Revoked can never be configured.
	c.v.AcceptTCB = []string{"Revoked"}
	if err := c.v.Validate(); err == nil {
		t.Errorf("Validate accepted AcceptTCB=Revoked")
	}
}

// A TDX module with an identity (TEE_TCB_SVN[1] > 0) is rated by its
// module identity's levels too.
func TestTDXModuleIdentity(t *testing.T) {
	c := baseline(t)
	c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = [16]byte{3, 1, 3} })
	if _, err := c.v.Verify(context.Background(), c.ev, c.in); err != nil {
		t.Fatalf("module SVN 3: %v", err)
	}
	c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = [16]byte{2, 1, 3} })
	if _, err := c.v.Verify(context.Background(), c.ev, c.in); attest.ClassOf(err) != attest.ClassTCB {
		t.Errorf("module SVN 2 (OutOfDate): %v, want class tcb", err)
	}
	c.withBody(t, func(b *tdxtest.Body) { b.TeeTCBSVN = [16]byte{3, 2, 3} })
	if _, err := c.v.Verify(context.Background(), c.ev, c.in); attest.ClassOf(err) != attest.ClassTCB {
		t.Errorf("unknown module TDX_02: %v, want class tcb", err)
	}
}

// Without Roots the verifier pins Intel's root, never a root from evidence,
// and never go-tdx-guest's silent fallback.
func TestDefaultRootsAreIntel(t *testing.T) {
	c := baseline(t)
	c.v.Roots = nil
	_, err := c.v.Verify(context.Background(), c.ev, c.in)
	if attest.ClassOf(err) != attest.ClassChain {
		t.Fatalf("test chain under Intel roots: %v, want class chain", err)
	}
	p := tdx.IntelRoots()
	if p == nil {
		t.Fatal("no Intel root")
	}
	if p.Equal(x509.NewCertPool()) {
		t.Error("Intel root pool is empty")
	}
}

func TestBundleOnDisk(t *testing.T) {
	c := baseline(t)
	dir := t.TempDir()
	if err := tdxtest.WriteDir(dir, c.f.Bundle); err != nil {
		t.Fatal(err)
	}
	c.v.Getter = nil
	c.v.Getter = &tdx.Bundle{FS: osDirFS(dir)}
	if _, err := c.v.Verify(context.Background(), c.ev, c.in); err != nil {
		t.Fatalf("bundle from %s: %v", dir, err)
	}
	if _, _, err := (&tdx.Bundle{FS: osDirFS(dir)}).Get("https://example.com/x"); err == nil {
		t.Error("bundle served an unknown URL")
	}
}
