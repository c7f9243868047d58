package snp

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"
)

func TestCRLCacheKeyedByBytesAndIssuer(t *testing.T) {
	now := time.Now()
	ark1, ark2 := &x509.Certificate{Raw: []byte("ark one")}, &x509.Certificate{Raw: []byte("ark two")}
	crl := &x509.RevocationList{NextUpdate: now.Add(time.Hour)}
	var c crlCache
	c.put(newCRLKey([]byte("crl"), ark1), crl, now)
	if got, ok := c.get(newCRLKey([]byte("crl"), ark1), now); !ok || got != crl {
		t.Fatalf("same bytes, same issuer: %v, %v; want the cached CRL", got, ok)
	}
	if _, ok := c.get(newCRLKey([]byte("crl"), ark2), now); ok {
		t.Error("same bytes under another issuer: served from the cache")
	}
	if _, ok := c.get(newCRLKey([]byte("crl!"), ark1), now); ok {
		t.Error("other bytes under the same issuer: served from the cache")
	}
	if _, ok := c.get(newCRLKey([]byte("crl"), ark1), now.Add(time.Hour)); ok {
		t.Error("at NextUpdate: served from the cache")
	}
	if c.len() != 0 {
		t.Errorf("expired fact kept: %d entries", c.len())
	}
}

func TestCRLCacheBounded(t *testing.T) {
	now := time.Now()
	ark := &x509.Certificate{Raw: []byte("ark")}
	var c crlCache
	for i := range 3 * maxCRLFacts {
		c.put(newCRLKey(fmt.Appendf(nil, "crl %d", i), ark), &x509.RevocationList{NextUpdate: now.Add(time.Duration(i+1) * time.Minute)}, now)
		if c.len() > maxCRLFacts {
			t.Fatalf("after %d puts: %d entries, at most %d", i+1, c.len(), maxCRLFacts)
		}
	}
	// The latest CRL survives eviction (the soonest-expiring go first).
	last := newCRLKey(fmt.Appendf(nil, "crl %d", 3*maxCRLFacts-1), ark)
	if _, ok := c.get(last, now); !ok {
		t.Error("the newest fact was evicted")
	}
}
