package tpm

import (
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// A cached chain counts only for the pools it was checked against, only
// for a while, and never past the certificate's expiry.
func TestCacheChains(t *testing.T) {
	ca, err := tpmtest.NewCA("Cache Test Vendor")
	if err != nil {
		t.Fatal(err)
	}
	sim := tpmtest.Start(t, tpmtest.Config{CA: ca})
	cert, err := x509.ParseCertificate(sim.EKCert)
	if err != nil {
		t.Fatal(err)
	}
	sim.Close()
	now := time.Now()
	roots, inter := ca.Roots(), ca.Intermediates()
	c := NewCache(2)
	if c.chainHit(cert, roots, inter, now) {
		t.Fatal("hit in an empty cache")
	}
	c.addChain(cert, roots, inter, now)
	if !c.chainHit(cert, roots, inter, now) {
		t.Fatal("no hit right after add")
	}
	if c.chainHit(cert, x509.NewCertPool(), inter, now) || c.chainHit(cert, roots, nil, now) {
		t.Error("hit for other pools")
	}
	if c.chainHit(cert, roots, inter, now.Add(ChainCacheTTL)) {
		t.Error("hit after the TTL")
	}
	if c.chainHit(cert, roots, inter, cert.NotBefore.Add(-time.Second)) {
		t.Error("hit before NotBefore")
	}
	c.addChain(cert, roots, inter, cert.NotAfter.Add(-time.Second))
	if c.chainHit(cert, roots, inter, cert.NotAfter.Add(time.Second)) {
		t.Error("hit past NotAfter")
	}
	// Eviction keeps the cache bounded.
	for i := 0; i < 5; i++ {
		other := *cert
		other.Raw = append([]byte{byte(i)}, cert.Raw...)
		c.addChain(&other, roots, inter, now)
	}
	if len(c.chains.m) != 2 || len(c.chains.keys) != 2 {
		t.Errorf("cache holds %d/%d entries, max 2", len(c.chains.m), len(c.chains.keys))
	}
	var none *Cache
	none.addChain(cert, roots, inter, now)
	if none.chainHit(cert, roots, inter, now) {
		t.Error("nil cache hit")
	}
}

// The chain a Challenge checked is not walked again by the Verify of the
// same admission, and a verifier with other roots does not inherit it.
func TestVerifyReusesChallengeChain(t *testing.T) {
	f := newFixture(t, tpmtest.Config{}, nil)
	cert, err := x509.ParseCertificate(f.sim.EKCert)
	if err != nil {
		t.Fatal(err)
	}
	if !f.ver.Cache.chainHit(cert, f.ver.Roots, f.ver.Intermediates, time.Now()) {
		t.Fatal("Challenge did not record the checked chain")
	}
	other, err := tpmtest.NewCA("Other Vendor")
	if err != nil {
		t.Fatal(err)
	}
	v := *f.ver // shares the cache, not the pools
	v.Roots, v.Intermediates = other.Roots(), other.Intermediates()
	if err := v.checkEK(cert); err == nil {
		t.Fatal("a verifier pinned to other roots accepted the cached chain")
	}
}

// A cached AK is the one checked: a rejected AK is never cached, and a
// different public area is parsed and checked anew.
func TestCacheAKs(t *testing.T) {
	f := newFixture(t, tpmtest.Config{}, nil)
	good := f.ev.Blobs[BlobAKPublic]
	c := NewCache(4)
	a, err := c.ak(good)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := c.ak(good); b != a {
		t.Error("second lookup of the same AK parsed it again")
	}
	bad := slices.Clone(good)
	bad[len(bad)-1] ^= 1 // another point: not on the curve
	if _, err := c.ak(bad); err == nil {
		t.Fatal("a changed AK passed")
	}
	if _, err := c.ak(bad); err == nil {
		t.Fatal("a rejected AK passed the second time (cached)")
	}
}
