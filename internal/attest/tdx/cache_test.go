package tdx_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// TestCollateralCache: collateral signatures are verified once per exact
// bytes, and the cache never turns a denial into an acceptance. (Every
// collateral case of TestDeny also runs on a verifier the baseline warmed:
// replaced CRLs, revoked signers, expired documents.)
func TestCollateralCache(t *testing.T) {
	ctx := context.Background()
	t.Run("warm", func(t *testing.T) {
		c := baseline(t)
		// One signing certificate, TCB info, QE identity, two CRLs.
		if n := c.v.CachedFacts(); n != 5 {
			t.Fatalf("%d facts after one verification, want 5", n)
		}
		for range 3 {
			if _, err := c.v.Verify(ctx, c.ev, c.in); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.v.CachedFacts(); n != 5 {
			t.Errorf("%d facts after four verifications of the same collateral, want 5", n)
		}
	})
	t.Run("same documents, signatures by another key", func(t *testing.T) {
		c := baseline(t)
		// TCB info and QE identity are byte for byte the baseline's; only
		// their signatures are not by the signing certificate's key.
		c.withCollateral(t, tdxtest.Collateral{SignKey: newKey(t)})
		_, err := c.v.Verify(ctx, c.ev, c.in)
		if attest.ClassOf(err) != attest.ClassChain || !strings.Contains(err.Error(), "signature") {
			t.Fatalf("err = %v, want a chain denial of the document signature", err)
		}
	})
	t.Run("signing certificate expired since it was cached", func(t *testing.T) {
		c := baseline(t)
		k := c.f.PKI
		tmpl := *k.TCBSign
		tmpl.NotAfter = tdxtest.Epoch.Add(24 * time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, k.Root, k.TCBSign.PublicKey, k.RootKey)
		if err != nil {
			t.Fatal(err)
		}
		short, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		c.withCollateral(t, tdxtest.Collateral{SignCert: tdxtest.PEM(short)})
		now := tdxtest.Epoch
		c.v.Now = func() time.Time { return now }
		if _, err := c.v.Verify(ctx, c.ev, c.in); err != nil {
			t.Fatalf("while the signing certificate is valid: %v", err)
		}
		// Two days on: the collateral is still fresh and every other
		// certificate valid; only the cached signer has expired.
		now = tdxtest.Epoch.Add(48 * time.Hour)
		_, err = c.v.Verify(ctx, c.ev, c.in)
		if attest.ClassOf(err) != attest.ClassChain || !strings.Contains(err.Error(), "collateral signing certificate") {
			t.Fatalf("err = %v, want the expired signing certificate denied", err)
		}
	})
}
