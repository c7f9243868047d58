package snp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
)

// The verifier caches only that a CRL's bytes verified under the pinned ARK.
// Each test first admits once (the cache holds the good CRL), then changes
// one thing about the collateral or the clock and expects a denial that an
// answer from the cache would have missed.

func verifyOK(t *testing.T, f *fixture) {
	t.Helper()
	if _, err := f.v.Verify(context.Background(), f.evidence(t, nil), f.in); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func wantDenied(t *testing.T, f *fixture, class attest.Class, msg string) {
	t.Helper()
	_, err := f.v.Verify(context.Background(), f.evidence(t, nil), f.in)
	if err == nil {
		t.Fatalf("Verify succeeded, want a %s denial containing %q", class, msg)
	}
	if attest.ClassOf(err) != class || !strings.Contains(err.Error(), msg) {
		t.Fatalf("Verify: %v (class %s), want class %s containing %q", err, attest.ClassOf(err), class, msg)
	}
}

func TestCRLReplacedAppliesAtOnce(t *testing.T) {
	f := newFixture(t)
	verifyOK(t, f)
	// AMD publishes a CRL listing this VCEK well before the old one's
	// NextUpdate: the next admission must see it.
	if err := f.chain.Revoke(f.dir, f.chain.VCEK.SerialNumber); err != nil {
		t.Fatal(err)
	}
	wantDenied(t, f, attest.ClassRevoked, "VCEK certificate serial")
	// And a CRL without it again (an operator's mistake undone) admits.
	if err := f.chain.WriteBundle(f.dir, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	verifyOK(t, f)
}

func TestCRLCachedThenForged(t *testing.T) {
	f := newFixture(t)
	verifyOK(t, f)
	// A CRL at the same URL signed by another ARK: the cached verdict for
	// the good CRL must not cover it.
	keys, err := snptest.GenerateKeys(2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := snptest.NewChain(snptest.ChainOptions{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.WriteBundle(f.dir, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	wantDenied(t, f, attest.ClassChain, "not signed by the pinned ARK")
}

func TestCRLCachedNeverPastNextUpdate(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	if err := f.chain.WriteBundle(f.dir, snptest.BundleOptions{ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.v.Now = func() time.Time { return now }
	verifyOK(t, f)
	// The very same bytes, an hour and a second later.
	f.v.Now = func() time.Time { return now.Add(time.Hour + time.Second) }
	wantDenied(t, f, attest.ClassCollateral, "stale")
}

func TestCRLCachedNotBeforeThisUpdate(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	if err := f.chain.WriteBundle(f.dir, snptest.BundleOptions{ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.v.Now = func() time.Time { return now }
	verifyOK(t, f)
	// A clock that steps back before the CRL was issued: the cached CRL is
	// not yet valid.
	f.v.Now = func() time.Time { return now.Add(-2 * time.Minute) }
	wantDenied(t, f, attest.ClassCollateral, "not valid before")
}

func TestCRLCollateralUnavailableAfterCached(t *testing.T) {
	f := newFixture(t)
	verifyOK(t, f)
	// The CRL is read for every admission: collateral that went away is a
	// denial, not a cache hit.
	f.v.Getter = &snp.Collateral{Dir: t.TempDir()}
	wantDenied(t, f, attest.ClassCollateral, "unavailable")
}
